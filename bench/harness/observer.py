"""The harness's view of children: when each `sleep <arg>` exec'd and when it exited.

"Running" is judged only from the kernel (see observer_proc.py), never from a
supervisor's claim. The harness stays single-threaded: it reads the observer's
pipe only while it waits, so nothing runs beside a measured action.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

PROC_SCRIPT = Path(__file__).with_name("observer_proc.py")


class ObserverError(RuntimeError):
    pass


class Observer:
    def __init__(self, tag: str, *, force_poll: bool = False) -> None:
        argv = [sys.executable, str(PROC_SCRIPT), tag] + (["--poll"] if force_poll else [])
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self._fd = self._proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buffer = b""
        self.execs: dict[str, list[tuple[int, int]]] = {}  # arg -> [(pid, t_ns)] in exec order
        self.exits: dict[int, int] = {}  # pid -> t_ns
        self.arg_of: dict[int, str] = {}
        self.lost = 0
        self.mode = ""
        self.resolution_ns = 0
        self._new: list[tuple[str, int, int, str]] = []
        self._pump_until(lambda: bool(self.mode), time.monotonic() + 10, "the observer to subscribe")

    def describe(self) -> dict:
        return {"mode": self.mode, "resolution_ns": self.resolution_ns, "lost_event_batches": self.lost}

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()

    # -- reading ------------------------------------------------------------

    def _read_available(self, timeout: float) -> None:
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
        if not ready:
            return
        chunk = b""
        while True:
            try:
                part = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                break
            if not part:
                raise ObserverError(f"observer exited (status {self._proc.wait()})")
            chunk += part
        data = self._buffer + chunk
        *lines, self._buffer = data.split(b"\n")
        for line in lines:
            self._record(line.decode())

    def _record(self, line: str) -> None:
        kind, *rest = line.split(" ")
        if kind == "E":
            pid, t_ns, arg = int(rest[0]), int(rest[1]), rest[2]
            self.execs.setdefault(arg, []).append((pid, t_ns))
            self.arg_of[pid] = arg
            self.exits.pop(pid, None)  # a reused pid: the exit on record was an earlier process's
            self._new.append(("E", pid, t_ns, arg))
        elif kind == "X":
            pid, t_ns = int(rest[0]), int(rest[1])
            self.exits[pid] = t_ns
            self._new.append(("X", pid, t_ns, self.arg_of.get(pid, "")))
        elif kind == "L":
            self.lost += 1
        elif kind == "M":
            self.mode, self.resolution_ns = rest[0], int(rest[1])

    def _pump_until(self, done, deadline: float, what: str) -> None:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                lost = f" (the observer lost {self.lost} event batches)" if self.lost else ""
                raise TimeoutError(f"timed out waiting for {what}{lost}")
            self._read_available(min(remaining, 0.5))

    def drain(self) -> None:
        """Take in whatever is already reported, without waiting."""
        self._read_available(0)
        self._new.clear()

    # -- waiting --------------------------------------------------------------

    def last_exec(self, arg: str, since_ns: int = 0) -> tuple[int, int] | None:
        """(pid, t_ns) of the latest exec of `sleep arg` at or after since_ns."""
        for pid, t_ns in reversed(self.execs.get(arg, ())):
            if t_ns >= since_ns:
                return pid, t_ns
        return None

    def wait_execs(self, args: Iterable[str], since_ns: int, timeout: float) -> dict[str, tuple[int, int]]:
        """Wait until every arg has exec'd at or after since_ns; {arg: (pid, t_ns)} of the first such exec."""
        found: dict[str, tuple[int, int]] = {}
        remaining = set()
        for arg in args:
            hit = next(((p, t) for p, t in self.execs.get(arg, ()) if t >= since_ns), None)
            if hit is None:
                remaining.add(arg)
            else:
                found[arg] = hit
        self._new.clear()

        def done() -> bool:
            for kind, pid, t_ns, arg in self._new:
                if kind == "E" and arg in remaining and t_ns >= since_ns:
                    remaining.discard(arg)
                    found[arg] = (pid, t_ns)
            self._new.clear()
            return not remaining

        self._pump_until(done, time.monotonic() + timeout, f"{len(remaining)} children to exec")
        return found

    def wait_exits(self, pids: Iterable[int], timeout: float) -> dict[int, int]:
        """Wait until every pid has exited; {pid: t_ns}."""
        pids = set(pids)
        self._new.clear()
        done = lambda: all(pid in self.exits for pid in pids)  # noqa: E731
        self._pump_until(done, time.monotonic() + timeout, f"{len(pids)} children to exit")
        return {pid: self.exits[pid] for pid in pids}
