"""Reading what the kernel says about processes, and fencing each system in a cgroup.

Everything the report says about a system (its CPU, its memory, that its
children are gone) comes from /proc and cgroupfs, never from the system itself.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.005) -> None:
    """Poll `predicate` until it holds; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def cmdline(pid: int) -> list[bytes] | None:
    """argv of a process, or None if it is gone (or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.split(b"\0")[:-1] if raw else None


def major_faults() -> int:
    """Major page faults on the whole machine so far: pages read back from disk on first touch."""
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("pgmajfault "):
                return int(line.split()[1])
    return 0


def proactive_reclaim() -> str | None:
    """What DAMON, if running, pages out: memory not accessed for a while, file pages included."""
    found = []
    for kdamond in _numbered(Path("/sys/kernel/mm/damon/admin/kdamonds")):
        try:
            if (kdamond / "state").read_text().strip() != "on":
                continue
            for context in _numbered(kdamond / "contexts"):
                aggregation_us = int((context / "monitoring_attrs/intervals/aggr_us").read_text())
                for scheme in _numbered(context / "schemes"):
                    if (scheme / "action").read_text().strip() == "pageout":
                        idle_s = int((scheme / "access_pattern/age/min").read_text()) * aggregation_us / 1e6
                        found.append(f"DAMON pages out memory not accessed for {idle_s:g} s")
        except (OSError, ValueError):
            continue
    return "; ".join(found) or None


def _numbered(directory: Path) -> list[Path]:
    """The numbered entries of a DAMON sysfs directory (beside them, counts such as nr_contexts)."""
    try:
        return [entry for entry in directory.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def sleep_arg(argv: list[bytes] | None) -> str | None:
    """The argument of a `sleep ARG` command line, else None."""
    if argv and len(argv) == 2 and os.path.basename(argv[0]) == b"sleep":
        return argv[1].decode(errors="replace")
    return None


def pids_with_sleep_prefix(prefix: str) -> list[int]:
    """Processes whose command line is `sleep <prefix…>` (children of this run)."""
    found = []
    for pid in all_pids():
        arg = sleep_arg(cmdline(pid))
        if arg is not None and arg.startswith(prefix):
            found.append(pid)
    return found


def _stat_fields(pid: int, task: int | None = None) -> list[str] | None:
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pid: int, task: int | None = None) -> int | None:
    """utime + stime of a process (all its threads, dead ones included) or of one thread."""
    fields = _stat_fields(pid, task)
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM…), in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Proportional set size: shared pages divided among their users (smaps_rollup)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def kill_quietly(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cgroup2_root() -> Path | None:
    """Where the unified (v2) hierarchy is mounted, if it is writable here."""
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mountpoint, fstype, options, *_ = line.split()
            if fstype == "cgroup2" and "rw" in options.split(","):
                return Path(mountpoint)
    return None


def _v1_named_systemd_root() -> Path | None:
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mountpoint, fstype, options, *_ = line.split()
            if fstype == "cgroup" and "name=systemd" in options.split(","):
                return Path(mountpoint)
    return None


def own_cgroup(root: Path, controllers: str) -> Path:
    """This process's cgroup in the hierarchy whose /proc/self/cgroup field is `controllers`
    ("" for v2, "name=systemd" for systemd's named v1 hierarchy)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, field, path = line.rstrip("\n").split(":", 2)
            if field == controllers:
                return root / path.lstrip("/")
    return root


class Fence:
    """A cgroup holding one system: its supervisor and everything that descends from it.

    Processes are put in by `entered()`: the harness hops into the cgroup, spawns,
    and hops back, so the child starts inside without any wrapper process. At the
    end `kill()` empties it with cgroup.kill, which no double fork escapes.
    When no writable cgroup v2 exists, it falls back to killing process groups
    and every `sleep` child carrying the system's argument prefix.
    """

    def __init__(self, name: str, sleep_prefix: str) -> None:
        self.sleep_prefix = sleep_prefix
        self.pgids: set[int] = set()
        root = cgroup2_root()
        self.dirs: list[Path] = []
        self._home: list[Path] = []
        if root is not None:
            self.dirs.append(root / name)
            self._home.append(own_cgroup(root, ""))
            # A hybrid host: systemd tracks its units in the named v1 hierarchy, keep it in step.
            v1 = _v1_named_systemd_root()
            if v1 is not None:
                self.dirs.append(v1 / name)
                self._home.append(own_cgroup(v1, "name=systemd"))
        try:
            for d in self.dirs:
                d.mkdir(exist_ok=True)
        except PermissionError:  # not root: fall back to process groups and the sleep prefix
            self.dirs, self._home = [], []

    @property
    def fenced(self) -> bool:
        return bool(self.dirs)

    def enter(self) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text("0")

    def leave(self) -> None:
        for home in self._home:
            (home / "cgroup.procs").write_text("0")

    def pids(self) -> list[int]:
        """Every process in the fence (the whole subtree)."""
        if not self.dirs:
            return pids_with_sleep_prefix(self.sleep_prefix)
        found: list[int] = []
        for dirpath, _dirs, files in os.walk(self.dirs[0]):
            if "cgroup.procs" in files:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    found.extend(int(x) for x in f.read().split())
        return found

    def cpu_usec(self) -> int | None:
        """CPU used by everything that ever ran in the fence (dead processes included)."""
        if not self.dirs:
            return None
        with open(self.dirs[0] / "cpu.stat") as f:
            for line in f:
                if line.startswith("usage_usec"):
                    return int(line.split()[1])
        return None

    def populated(self) -> bool:
        if not self.dirs:
            return bool(pids_with_sleep_prefix(self.sleep_prefix))
        with open(self.dirs[0] / "cgroup.events") as f:
            return "populated 1" in f.read()

    def kill(self, timeout: float = 10.0) -> None:
        """Kill everything in the fence and wait until it is empty."""
        if self.dirs:
            (self.dirs[0] / "cgroup.kill").write_text("1")
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_quietly(pids_with_sleep_prefix(self.sleep_prefix))
        wait_until(lambda: not self.populated(), timeout, f"fence {self.sleep_prefix} to empty")

    def remove(self) -> None:
        """Remove the (empty) cgroup directories, children first."""
        for d in self.dirs:
            for dirpath, _dirs, _files in sorted(os.walk(d), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass



def sweep_fences(tag: str) -> list[str]:
    """Kill and remove every cgroup this run left behind (bench-<tag>…); their names.

    The safety net under the adapters' own teardown: it runs last, whatever happened.
    """
    left = []
    roots = [r for r in (cgroup2_root(), _v1_named_systemd_root()) if r is not None]
    for root in roots:
        for d in root.glob(f"bench-{tag}*"):
            left.append(d.name)
            if (d / "cgroup.kill").exists():
                (d / "cgroup.kill").write_text("1")
                events = d / "cgroup.events"
                wait_until(lambda events=events: "populated 0" in events.read_text(), 10, f"{d.name} to empty")
            for dirpath, _dirs, _files in sorted(os.walk(d), key=lambda t: -len(t[0])):
                os.rmdir(dirpath)
    return sorted(set(left))
