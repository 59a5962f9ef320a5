"""Reaping children: the shims we spawn and, as subreaper or PID 1, every orphan.

One owner for `waitpid(-1)`: nothing else in the reconciler waits on children
(no `subprocess`, no asyncio child watcher), so no exit status is stolen.
Short-lived helper commands (exec health checks) go through `run_command`.
Drivers that spawn from worker threads wrap each spawn in `driver.spawning()`,
which this reaper honours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import AsyncIterator, Iterator

import anyio

from .driver import SPAWNS

PR_SET_CHILD_SUBREAPER = 36
# `sh -c SCRIPT sh DIR ARGV...`: cd into DIR, then exec ARGV there (same pid, same group).
_IN_DIRECTORY = ("/bin/sh", "-c", 'cd -- "$1" && shift && exec "$@"', "sh")


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to us (Linux), so we can reap them."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@contextlib.contextmanager
def signal_receiver(*signals: int) -> Iterator[AsyncIterator[int]]:
    """anyio's signal receiver, without a warning when the loop's wake-up buffer is full.

    A thousand units exiting at once send a thousand SIGCHLDs; once a wake-up
    byte is pending the rest carry no news (one reap collects every child), yet
    CPython would print a warning for each byte it could not write. asyncio
    turns that warning back on each time it adds a handler, so every receiver
    the reconciler opens goes through here.
    """
    with anyio.open_signal_receiver(*signals) as received:
        fd = signal.set_wakeup_fd(-1)
        if fd != -1:
            signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        yield received


class Reaper:
    """Collects exit statuses on SIGCHLD; hands them to whoever awaits that pid."""

    def __init__(self) -> None:
        self._waiting: dict[int, anyio.Event] = {}
        self._status: dict[int, int] = {}

    async def run(self) -> None:
        """Reap until cancelled. Start it before spawning anything."""
        with signal_receiver(signal.SIGCHLD) as signals:
            self.reap_all()
            async for _ in signals:
                self.reap_all()

    def reap_all(self) -> None:
        with SPAWNS.reaping() as may_reap:
            if may_reap:
                self._reap_all()

    def _reap_all(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            event = self._waiting.get(pid)
            if event is not None:
                self._status[pid] = status
                event.set()

    async def run_command(
        self, argv: list[str], *, timeout: float, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> int | None:
        """Run a short command with output discarded; its exit code, or None on timeout.

        Raises OSError when it cannot be spawned. With `cwd`, the command runs under
        a tiny /bin/sh that changes directory first (posix_spawn has no chdir action
        in Python 3.11), so a missing command or directory shows as a non-zero exit
        code (127, 2) rather than OSError.
        """
        if cwd is not None:
            argv = [*_IN_DIRECTORY, cwd, *argv]
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            pid = os.posix_spawnp(
                argv[0],
                argv,
                os.environ if env is None else env,
                file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)],
                setpgroup=0,
            )
        finally:
            os.close(devnull)
        event = self._waiting[pid] = anyio.Event()
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
            if not event.is_set():
                os.killpg(pid, signal.SIGKILL)
                with anyio.CancelScope(shield=True):
                    await event.wait()
                return None
            return os.waitstatus_to_exitcode(self._status.pop(pid))
        finally:
            self._waiting.pop(pid, None)
            self._status.pop(pid, None)
