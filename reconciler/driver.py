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
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

import attrs

from .errors import DriverUnavailable
from .model import Handle, Observation, Spec

ENTRY_POINT_GROUP = "reconciler.drivers"


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
    async def stop(self, handle: Handle, signal: int, timeout: float) -> Observation:
        """Send `signal` to the unit's whole process tree, wait up to `timeout`, then kill.

        Returns the observation after the stop (normally EXITED). Success if already gone.
        """

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
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_driver_class(name: str) -> type[Driver]:
    """Find a driver class by its entry-point name."""
    value = _declared_entry_point(name)
    if value is None:
        value = _entry_point_by_importlib(name)
    if value is None:
        known = ", ".join(driver_names()) or "none"
        raise DriverUnavailable(f"driver {name!r} is not installed (installed: {known})")
    cls = _load(value)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverUnavailable(f"driver {name!r}: entry point {value} is not a Driver")
    return cls


def _declared_entry_point(name: str) -> str | None:
    """The value ("module:attr") of entry point `name` in our group, read from the metadata
    directories on sys.path; None if none declares it.

    What importlib.metadata finds for path-based distributions, in its order (path
    entries in turn, the first distribution of a name wins), without importing it:
    that import alone is a tenth of a `--once` with nothing to do.
    """
    seen: set[str] = set()
    for entry in sys.path:
        root = entry or "."
        try:
            children = os.listdir(root)
        except OSError:  # a zip file or a missing directory: left to importlib.metadata
            continue
        for child in children:
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            distribution = re.sub(r"[-_.]+", "_", low.rpartition(".")[0].partition("-")[0])
            if distribution in seen:
                continue
            seen.add(distribution)
            try:
                with open(os.path.join(root, child, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue
            value = _entry_in(text, ENTRY_POINT_GROUP, name)
            if value is not None:
                return value
    return None


def _entry_in(text: str, group: str, name: str) -> str | None:
    """The value of `name` in section `group` of an entry_points.txt (parsed as importlib.metadata does)."""
    section = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group and "=" in line:
            key, value = line.split("=", 1)
            if key.strip() == name:
                return value.strip()
    return None


def _entry_point_by_importlib(name: str) -> str | None:
    """The slow, complete lookup (zipped and finder-provided distributions too)."""
    from importlib.metadata import entry_points

    return next((ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name), None)


def _load(value: str) -> object:
    """The object an entry point's "module:attr.attr [extras]" value names (as EntryPoint.load)."""
    module, _, attributes = value.split("[", 1)[0].partition(":")
    target: object = importlib.import_module(module.strip())
    for attribute in filter(None, attributes.strip().split(".")):
        target = getattr(target, attribute)
    return target


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
