"""What every system under test offers the workloads: the same verbs, timed the same way.

Timed verbs return the CLOCK_MONOTONIC nanosecond at which the user-visible
action began (just before the spawn, rename or signal); the workloads then ask
the observer when the children exec'd or exited. No adapter judges "running".
"""

from __future__ import annotations

import abc
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .. import procfs


@dataclass(frozen=True)
class Tools:
    """Executables the adapters use (the bench venv's, or the current interpreter's)."""

    bin_dir: Path  # where `reconciler`, `supervisord`, `supervisorctl` live
    python: str
    sleep: str

    def exe(self, name: str) -> str | None:
        candidate = self.bin_dir / name
        return str(candidate) if candidate.exists() else shutil.which(name)


class System(abc.ABC):
    name: ClassVar[str]
    #: How the system is configured for its best legitimate speed (goes into the report).
    how: ClassVar[str]

    def __init__(self, tools: Tools, workdir: Path, prefix: str) -> None:
        self.tools = tools
        self.workdir = workdir
        self.prefix = prefix  # every child's sleep argument starts with it
        self.fence = procfs.Fence(f"bench-{prefix}", prefix)
        self.units: dict[str, str] = {}  # unit name -> sleep argument
        self._serial = 0
        self.process: subprocess.Popen | None = None  # the supervisor, for those that have one
        self.env: dict[str, str] | None = None  # the environment its commands run with
        workdir.mkdir(parents=True)

    # -- facts ------------------------------------------------------------------

    @classmethod
    def unavailable(cls, tools: Tools) -> str | None:
        """None if this system can run here, else why not."""
        return None

    @classmethod
    @abc.abstractmethod
    def version(cls, tools: Tools) -> str: ...

    # -- units ------------------------------------------------------------------

    def new_unit(self) -> tuple[str, str]:
        """A fresh unit name and its unique sleep argument."""
        name = f"u{self._serial + 1:06d}"
        return name, self.renew(name)

    def renew(self, name: str) -> str:
        """Give unit `name` a new, never used sleep argument (a changed command line)."""
        self._serial += 1
        self.units[name] = arg = f"{self.prefix}{self._serial:06d}"
        return arg

    def prepare(self, count: int) -> list[str]:
        """Write `count` unit definitions before the system starts (not timed); their args."""
        args = []
        for _ in range(count):
            name, arg = self.new_unit()
            self.define(name, arg)
            args.append(arg)
        return args

    @abc.abstractmethod
    def define(self, name: str, arg: str) -> None:
        """Write one unit definition where the system reads it at start."""

    # -- timed verbs ----------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> int:
        """Start the supervisor with the prepared units; returns t0."""

    @abc.abstractmethod
    def add(self) -> tuple[str, int]:
        """With the supervisor running, add one unit by its fastest trigger; (arg, t0)."""

    def terminate(self) -> int:
        """SIGTERM to the supervisor, which is to stop every child; returns t0."""
        assert self.process is not None
        t0 = time.monotonic_ns()
        self.process.send_signal(signal.SIGTERM)
        return t0

    def ready_for_changes(self, timeout: float) -> None:
        """Block until `add` can be used (control socket up…). Not timed."""

    # -- cost -------------------------------------------------------------------

    def own_cpu_ticks(self) -> int | None:
        """utime+stime of the supervisor itself."""
        return None if self.process is None else procfs.cpu_ticks(self.process.pid)

    def rss_kib(self) -> int | None:
        return None if self.process is None else procfs.status_kib(self.process.pid, "VmRSS")

    def added_pids(self) -> list[int]:
        """Every process the system runs besides the children themselves (supervisor, shims)."""
        return [pid for pid in self.fence.pids() if not self.is_child(pid)]

    def is_child(self, pid: int) -> bool:
        arg = procfs.sleep_arg(procfs.cmdline(pid))
        return arg is not None and arg.startswith(self.prefix)

    def status_command(self) -> list[str] | None:
        """The command that lists every unit's state (run with `self.env`), if the system has one."""
        return None

    # -- spawning and cleaning up --------------------------------------------

    def spawn(self, argv: list[str], log: str = "supervisor.log") -> int:
        """Start the supervisor inside the fence; returns t0, taken just before the spawn."""
        out = open(self.workdir / log, "ab")
        self.fence.enter()
        try:
            t0 = time.monotonic_ns()
            self.process = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                cwd=self.workdir,
            )
        finally:
            self.fence.leave()
            out.close()
        self.fence.pgids.add(self.process.pid)
        return t0

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the supervisor process to end; the monotonic ns when it was seen gone."""
        if self.process is None:
            return None
        self.process.wait(timeout)
        return time.monotonic_ns()

    def teardown(self) -> None:
        """Kill everything this system started, whatever state it is in; its files stay until the run ends.

        Not a graceful stop: that is the shutdown workload's business, and here
        only speed and certainty matter. The files are not removed here: on a
        filesystem without a journal, ext4 skips every inode deleted in the last
        minute (up to five) when it allocates one, so files removed between
        samples would make the next sample's file creations cost up to a
        millisecond each, a cost of the harness and not of the system measured.
        """
        self.fence.kill()
        if self.process is not None:
            self.process.wait(5)
        self.fence.remove()

    def tail_log(self, log: str = "supervisor.log", lines: int = 15) -> str:
        path = self.workdir / log
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def environ(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
