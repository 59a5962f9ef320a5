"""The driver interface and how drivers are found.

A driver acts on and observes processes; it decides nothing. Drivers are
plugins registered under the entry-point group ``reconciler.drivers``; the core
never imports a driver module by name. Every verb is idempotent: starting a
unit whose handle is alive with the same spec hash returns that handle,
stopping an absent unit is success. Restart is stop-then-start, composed by the
core.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import os
import threading
import time
from pathlib import Path
from signal import SIGCHLD
from typing import Iterable, Iterator, Mapping

import attrs

from . import plugins
from .errors import DriverUnavailable
from .model import Handle, Observation, Spec

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # the unit of /proc start times


@functools.cache
def boot_epoch() -> float:
    """Wall-clock seconds at which this machine booted, to a few microseconds (Linux).

    /proc/stat's `btime` is cut to the whole second: start times built on it came
    out up to a second early, and health probes and run lengths measured from them
    were off by as much. The wall clock minus CLOCK_BOOTTIME (the clock /proc's
    start ticks count in) moves only when the clock is stepped, as btime does: NTP
    slews both alike. Read once per process; the closest of three readings wins.
    """
    readings = []
    for _ in range(3):
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        wall = time.time()
        after = time.clock_gettime(time.CLOCK_BOOTTIME)
        readings.append((after - before, wall - (before + after) / 2))
    return min(readings)[1]


def process_start_time(start_ticks: int) -> float:
    """Epoch seconds at which a process started, from its /proc start ticks (field 22 of stat)."""
    return boot_epoch() + start_ticks / CLOCK_TICKS


class _Spawns:
    """Spawns under way in worker threads, which `waitpid(-1)` must not race.

    A child that exits at once could be reaped before the thread that spawned
    it has opened a pidfd on it, and its exit status would be lost. So the
    reaper holds off while any such spawn is under way, and the last spawn to
    finish raises SIGCHLD again for the reap it held off.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._under_way = 0
        self._held_off = False

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        with self._lock:
            self._under_way += 1
        try:
            yield
        finally:
            with self._lock:
                self._under_way -= 1
                wake = self._held_off and self._under_way == 0
                if wake:
                    self._held_off = False
            if wake:
                os.kill(os.getpid(), SIGCHLD)

    @contextlib.contextmanager
    def reaping(self) -> Iterator[bool]:
        """True if reaping may go ahead now (no spawn starts until it is done)."""
        with self._lock:
            if self._under_way:
                self._held_off = True
            yield not self._under_way


SPAWNS = _Spawns()  # the one reaper consults it (reaper.py)


def spawning() -> contextlib.AbstractContextManager[None]:
    """Wrap a spawn and the opening of its pidfd (in any thread): no reap comes between them."""
    return SPAWNS.spawning()


@attrs.frozen
class Launch:
    """Everything a driver needs to start a unit: the spec and where its output goes."""

    spec: Spec
    stdout_path: Path
    stderr_path: Path
    # A daemon that stays up to watch the unit started it (not --once): a driver may then
    # leave recording the exit to the reconciler instead of to a helper that outlives it.
    resident: bool = False


class Driver(abc.ABC):
    """One way of running processes (posix fork/exec, systemd-run, launchd, Job Objects)."""

    name: str = ""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @classmethod
    def available(cls) -> str | None:
        """None if this driver can run here, else the reason it cannot."""
        return None

    @abc.abstractmethod
    async def start(self, launch: Launch) -> Handle:
        """Start the unit and return once its process is confirmed to exist (exec'd).

        Raises DriverError (transient or permanent) when it cannot.
        """

    @abc.abstractmethod
    async def stop(self, handle: Handle, signal: int, timeout: float, *, signalled: bool = False) -> Observation:
        """Send `signal` to the unit's whole process tree, wait up to `timeout`, then kill.

        With `signalled`, `begin_stop` has already sent `signal`: it is not sent twice.
        Returns the observation after the stop (normally EXITED). Success if already gone.
        """

    def prepare_resident(self) -> None:
        """A daemon is about to start the units it stays up to watch (Launch.resident).

        What those starts need may be set up now, while the first pass reads the
        specs, rather than amid its starts. Must not raise: a start that finds
        things unready sets them up itself, and reports what fails.
        """

    def begin_stop(self, handle: Handle, signal: int) -> bool:
        """Send the stop `signal` to the unit's whole process tree now, and do not wait.

        A shutdown calls this for every unit before it awaits any stop, so the
        last unit is signalled as soon as the first. True if the signal went
        out; False (the default) leaves sending it to `stop`.
        """
        return False

    @abc.abstractmethod
    async def observe(self, handles: Iterable[Handle]) -> Mapping[str, Observation]:
        """Ask the OS about each handle (keyed by unit name). Never answers from memory."""

    @abc.abstractmethod
    async def wait(self, handle: Handle) -> None:
        """Return when the unit's process has exited (event-driven, no polling loop).

        Returns at once if it is already gone. Cancellation must be safe.
        """

    def signal(self, handle: Handle, signal: int) -> bool:
        """Send a signal to the unit's main process if its identity still matches."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release OS resources (pidfds, bus connections). Units keep running."""


def driver_names() -> list[str]:
    return sorted(plugins.entry_points())


def load_driver_class(name: str) -> type[Driver]:
    """Find a driver class by its entry-point name (remembered between runs, see plugins.py)."""
    try:
        return _load_driver_class(name, plugins.entry_points())
    except (ImportError, AttributeError, DriverUnavailable):
        # What the cache named is gone, or what it left out is new: look again.
        return _load_driver_class(name, plugins.entry_points(fresh=True))


def _load_driver_class(name: str, found: dict[str, str]) -> type[Driver]:
    value = found.get(name)
    if value is None:
        known = ", ".join(sorted(found)) or "none"
        raise DriverUnavailable(f"driver {name!r} is not installed (installed: {known})")
    cls = plugins.load(value)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverUnavailable(f"driver {name!r}: entry point {value} is not a Driver")
    return cls


def resolve_driver(name: str, state_dir: Path) -> Driver:
    """Instantiate the named driver, or for "auto" the first available by preference."""
    candidates = AUTO_ORDER if name == "auto" else (name,)
    reasons = []
    for candidate in candidates:
        try:
            cls = load_driver_class(candidate)
        except DriverUnavailable as exc:
            if name != "auto":
                raise
            reasons.append(str(exc))
            continue
        why_not = cls.available()
        if why_not is None:
            return cls(state_dir)
        if name != "auto":
            raise DriverUnavailable(f"driver {name!r} cannot run here: {why_not}")
        reasons.append(f"{candidate}: {why_not}")
    raise DriverUnavailable("no driver can run here: " + "; ".join(reasons))


# "auto" prefers the embedded posix driver: it needs nothing but the kernel.
AUTO_ORDER = ("posix", "launchd", "windows")


class DriverSet:
    """The drivers in use, resolved lazily: each spec may name its own, "auto" means the default."""

    def __init__(self, state_dir: Path, default: str = "auto") -> None:
        self.state_dir = state_dir
        self.default = default
        self._by_name: dict[str, Driver] = {}

    def get(self, name: str) -> Driver:
        """The driver for a spec's or handle's driver name. Raises DriverUnavailable."""
        key = self.default if name == "auto" else name
        driver = self._by_name.get(key)
        if driver is None:
            driver = resolve_driver(key, self.state_dir)
            self._by_name[key] = self._by_name[driver.name] = driver
        return driver

    async def observe(self, handles: Iterable[Handle]) -> dict[str, Observation]:
        """Observe handles with their own drivers; an unavailable driver yields UNKNOWN."""
        from .model import ProcessState

        groups: dict[str, list[Handle]] = {}
        for handle in handles:
            groups.setdefault(handle.driver, []).append(handle)
        observed: dict[str, Observation] = {}
        for name, group in groups.items():
            try:
                driver = self.get(name)
            except DriverUnavailable as exc:
                observed.update({h.unit: Observation(ProcessState.UNKNOWN, pid=h.pid, message=str(exc)) for h in group})
                continue
            observed.update(await driver.observe(group))
        return observed

    async def aclose(self) -> None:
        for driver in set(self._by_name.values()):
            await driver.aclose()
        self._by_name.clear()
