"""The lower bound: what the machine itself can do, with no supervisor at all.

posix_spawn (vfork-style clone + exec) and one pidfd per child; one thread
blocks in epoll over the pidfds and re-spawns a child the moment it is reaped.
No files, no state, no bookkeeping beyond pidfd -> argument.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

from .. import procfs
from .base import System, Tools


class Raw(System):
    name = "raw"
    how = "in-process posix_spawn + pidfd; one epoll thread restarts a reaped child at once; stdio on /dev/null"

    @classmethod
    def version(cls, tools: Tools) -> str:
        return "posix_spawn + pidfd_open (Python os module)"

    def __init__(self, tools: Tools, workdir, prefix: str) -> None:
        super().__init__(tools, workdir, prefix)
        self._prepared: list[str] = []
        self._pidfds: dict[int, tuple[int, str]] = {}  # pidfd -> (pid, arg)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        self._lock = threading.Lock()  # a pidfd is never signalled while it is being closed
        self._devnull = os.open(os.devnull, os.O_RDWR)
        self._thread_id: int | None = None
        self._thread = threading.Thread(target=self._watch, name="raw-restarter", daemon=True)

    def define(self, name: str, arg: str) -> None:
        self._prepared.append(arg)

    def _spawn(self, arg: str) -> None:
        pid = os.posix_spawn(
            self.tools.sleep,
            [self.tools.sleep, arg],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, self._devnull, fd) for fd in (0, 1, 2)],
            setpgroup=0,
        )
        pidfd = os.pidfd_open(pid)
        self._pidfds[pidfd] = (pid, arg)
        self._epoll.register(pidfd, select.EPOLLIN)

    def _watch(self) -> None:
        self._thread_id = threading.get_native_id()
        while True:
            for fd, _mask in self._epoll.poll():
                if fd == self._wake_r:
                    return
                with self._lock:
                    os.waitid(os.P_PIDFD, fd, os.WEXITED)
                    self._epoll.unregister(fd)
                    os.close(fd)
                    _pid, arg = self._pidfds.pop(fd)
                if not self._stopping:
                    self._spawn(arg)

    def start(self) -> int:
        self._thread.start()
        t0 = time.monotonic_ns()
        for arg in self._prepared:
            self._spawn(arg)
        return t0

    def add(self) -> tuple[str, int]:
        _name, arg = self.new_unit()
        t0 = time.monotonic_ns()
        self._spawn(arg)
        return arg, t0

    def terminate(self) -> int:
        self._stopping = True
        t0 = time.monotonic_ns()
        self._signal_all(signal.SIGTERM)
        return t0

    def _signal_all(self, signum: int) -> None:
        with self._lock:
            for pidfd in list(self._pidfds):
                try:
                    signal.pidfd_send_signal(pidfd, signum)
                except ProcessLookupError:
                    pass  # exited, not yet reaped by the restarter thread

    def wait_exit(self, timeout: float) -> int | None:
        return None  # no supervisor process

    def own_cpu_ticks(self) -> int | None:
        """The restarter thread's CPU: all the raw lower bound spends while idle."""
        return None if self._thread_id is None else procfs.cpu_ticks(os.getpid(), self._thread_id)

    def rss_kib(self) -> int | None:
        return None  # in-process: nothing of its own to weigh

    def added_pids(self) -> list[int]:
        return []

    def teardown(self) -> None:
        self._stopping = True
        self._signal_all(signal.SIGKILL)
        procfs.wait_until(lambda: not self._pidfds, 10, "raw children to be reaped")
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        for fd in (self._wake_r, self._wake_w, self._devnull):
            os.close(fd)
        self._epoll.close()
        super().teardown()
