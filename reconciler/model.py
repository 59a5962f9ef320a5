"""Value objects shared by every layer.

Everything here is a frozen attrs class or an enum: the planner compares them, the
ledger stores them, drivers receive and return them. Nothing here does I/O.
Units of measure are fixed: durations are float seconds, sizes are int bytes,
signals are ``signal.Signals``, timestamps are float seconds since the epoch.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import hashlib
import operator
import signal
from typing import Any, Callable, Mapping

import attrs
import orjson

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# Spec file extensions and the format each is read as.
SPEC_FORMATS = {".toml": "TOML", ".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}


class RestartPolicy(str, enum.Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class HealthType(str, enum.Enum):
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


class OnUnhealthy(str, enum.Enum):
    RESTART = "restart"
    IGNORE = "ignore"


class UnitState(str, enum.Enum):
    """The contract's `state` of a unit, as shown by `status`."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"
    BACKOFF = "backoff"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Health(str, enum.Enum):
    NONE = "none"
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


# --- desired state -----------------------------------------------------------


@attrs.frozen
class RestartSettings:
    policy: RestartPolicy = RestartPolicy.ALWAYS
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    reset_after: float = 10.0
    max_retries: int = 0


@attrs.frozen
class StopSettings:
    signal: signal.Signals = signal.SIGTERM
    timeout: float = 10.0


@attrs.frozen
class HealthCheck:
    type: HealthType
    url: str | None = None
    port: int | None = None
    command: tuple[str, ...] | None = None
    interval: float = 5.0
    timeout: float = 2.0
    retries: int = 3
    start_period: float = 0.0
    on_unhealthy: OnUnhealthy = OnUnhealthy.RESTART


@attrs.frozen
class LogSettings:
    max_size: int = 10 * 1024 * 1024
    keep: int = 5
    compress: bool = False


@attrs.frozen
class Resources:
    memory_max: int | None = None
    cpu_quota: float | None = None  # fraction of one CPU: "50%" -> 0.5


def _frozen_env(value: Mapping[str, str] | tuple = ()) -> tuple[tuple[str, str], ...]:
    # collections.abc, not typing: typing's isinstance check costs ten times more.
    items = value.items() if isinstance(value, collections.abc.Mapping) else value
    return tuple(sorted((str(k), str(v)) for k, v in items))


@attrs.frozen
class Spec:
    """One unit's desired state, fully resolved (defaults applied, paths absolute).

    `command` is the argv that is exec'd: a string command from the file has
    already become ("/bin/sh", "-c", text).
    """

    name: str
    command: tuple[str, ...]
    cwd: str
    path: str  # absolute path of the spec file
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_frozen_env)
    enabled: bool = True
    driver: str = "auto"
    depends_on: tuple[str, ...] = ()
    user: str | None = None
    group: str | None = None
    restart: RestartSettings = RestartSettings()
    stop: StopSettings = StopSettings()
    health: HealthCheck | None = None
    logs: LogSettings = LogSettings()
    resources: Resources = Resources()

    # Cached on first use: the planner compares them for thousands of specs per pass,
    # and specs loaded from the ledger are often compared by identity first.
    @functools.cached_property
    def process_hash(self) -> str:
        return process_hash_of({name: getattr(self, name) for name in PROCESS_FIELDS})

    @functools.cached_property
    def content_hash(self) -> str:
        return _hash(spec_to_dict(self))

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


# What the running process can see: a change to any of these needs a restart.
PROCESS_FIELDS = ("command", "cwd", "env", "user", "group", "driver")


def process_hash_of(values: Mapping[str, Any]) -> str:
    """`Spec.process_hash` from a spec or its `spec_to_dict` form (tuples and lists hash alike)."""
    return _hash({name: values[name] for name in PROCESS_FIELDS})


def _hash(value: Any) -> str:
    return "sha256:" + hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """A JSON-ready dict of a spec (durations in seconds, signals by name).

    Hand-rolled rather than `attrs.asdict`: it runs for every spec a process
    loads (content hashes), and the generic walk costs several times more.
    """
    return _plain(spec)


def _plain(value: Any) -> Any:
    convert = _converter(type(value))
    return value if convert is None else convert(value)


@functools.cache
def _converter(cls: type) -> Callable[[Any], Any] | None:
    """How a value of this type becomes JSON-ready; None when it already is.

    Decided once per type: asking `attrs.has` and `isinstance` of every value
    made up most of a content hash.
    """
    if issubclass(cls, signal.Signals):
        return operator.attrgetter("name")
    if issubclass(cls, enum.Enum):
        return operator.attrgetter("value")
    if attrs.has(cls):
        names = _field_names(cls)
        return lambda obj: {name: _plain(getattr(obj, name)) for name in names}
    return None


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(cls))


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """The inverse of `spec_to_dict`, for specs the ledger kept (already validated).

    When `data` has every field this version writes, it is exactly what
    `spec_to_dict` gives for the result, so the content hash is taken from it:
    a process loading a thousand records skips a thousand walks of the spec.
    """
    complete = data.keys() == _field_keys()[Spec]
    nested: dict[str, Any] = {}
    for name in _NESTED:
        value = data.get(name)
        if value is not None:  # else the default (no health check; settings from an older form)
            nested[name], whole = _settings_from_dict(name, value)
            complete = complete and whole
    spec = Spec(
        name=data["name"],
        command=tuple(data["command"]),
        cwd=data["cwd"],
        path=data["path"],
        env=tuple(tuple(kv) for kv in data.get("env", ())),
        enabled=data.get("enabled", True),
        driver=data.get("driver", "auto"),
        depends_on=tuple(data.get("depends_on", ())),
        user=data.get("user"),
        group=data.get("group"),
        **nested,
    )
    if complete:
        object.__setattr__(spec, "content_hash", _hash(data))  # the cached_property's slot
    return spec


def _restart(data: Mapping[str, Any]) -> RestartSettings:
    return RestartSettings(**{**data, "policy": RestartPolicy(data["policy"])})


def _stop(data: Mapping[str, Any]) -> StopSettings:
    return StopSettings(signal=signal.Signals[data["signal"]], timeout=data["timeout"])


def _health(data: Mapping[str, Any]) -> HealthCheck:
    command = data.get("command")
    return HealthCheck(
        **{
            **data,
            "type": HealthType(data["type"]),
            "on_unhealthy": OnUnhealthy(data["on_unhealthy"]),
            "command": None if command is None else tuple(command),
        }
    )


# The settings objects a spec holds, by field: their class and how each is built from its stored form.
_NESTED: dict[str, tuple[type, Callable[[Mapping[str, Any]], Any]]] = {
    "restart": (RestartSettings, _restart),
    "stop": (StopSettings, _stop),
    "health": (HealthCheck, _health),
    "logs": (LogSettings, lambda data: LogSettings(**data)),
    "resources": (Resources, lambda data: Resources(**data)),
}
_SETTINGS_MEMO: dict[tuple[str, bytes], tuple[Any, bool]] = {}
_SETTINGS_MEMO_SIZE = 1024


def _settings_from_dict(name: str, data: Mapping[str, Any]) -> tuple[Any, bool]:
    """A spec's settings object from its stored form, and whether that form had every field.

    Specs share a few distinct settings (most keep the defaults) and the objects
    are frozen, so equal stored forms (byte for byte) give the same object.
    """
    key = (name, orjson.dumps(data))
    known = _SETTINGS_MEMO.get(key)
    if known is None:
        cls, build = _NESTED[name]
        known = (build(data), data.keys() == _field_keys()[cls])
        if len(_SETTINGS_MEMO) < _SETTINGS_MEMO_SIZE:
            _SETTINGS_MEMO[key] = known
    return known


@functools.cache
def _field_keys() -> dict[type, set[str]]:
    return {cls: set(_field_names(cls)) for cls in (Spec, *(cls for cls, _ in _NESTED.values()))}


@attrs.frozen
class SpecProblem:
    """An invalid spec file: the path and the one-line reason (without the path)."""

    path: str
    error: str


@attrs.frozen
class Desired:
    """The whole desired state as read in one pass.

    `complete` is False when the specs directory could not be read in full
    (missing, unreadable): then nothing may be stopped for being absent.
    `restart_requests` maps unit name -> request token (see `reconciler restart`).
    """

    specs: Mapping[str, Spec]
    problems: tuple[SpecProblem, ...] = ()
    complete: bool = True
    restart_requests: Mapping[str, str] = attrs.field(factory=dict)


# --- observed state ----------------------------------------------------------


@attrs.frozen
class Handle:
    """What a driver needs to find a unit's process again, persisted in the ledger.

    `data` is driver-private and JSON-serialisable (e.g. shim pid, boot id,
    process start ticks). `started_at` is the process's own start time.
    """

    driver: str
    unit: str
    spec_hash: str
    pid: int | None
    started_at: float | None
    data: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Handle":
        return cls(**data)


class ProcessState(str, enum.Enum):
    RUNNING = "running"  # verified alive, identity matches the handle
    EXITED = "exited"  # was ours, is gone; exit facts as far as known
    GONE = "gone"  # nothing to observe (never started, or forgotten)
    UNKNOWN = "unknown"  # the driver cannot tell right now


@attrs.frozen
class Observation:
    """A driver's report on one handle, taken from the OS at observe time.

    `exit_code`/`exit_signal` are None when not known; `message` says why.
    """

    state: ProcessState
    pid: int | None = None
    started_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    message: str = ""


# --- memory ------------------------------------------------------------------


@attrs.frozen
class UnitRecord:
    """What the reconciler remembers about a unit between passes (and restarts).

    The ledger stores these; the planner reads them as history. The process is
    the truth: every pass re-observes it through the handle.
    """

    name: str
    spec: Spec | None = None  # the last good spec in force for this unit
    handle: Handle | None = None  # how to find its process; None when none runs
    desired: str = "running"  # running | stopped
    state: UnitState = UnitState.UNKNOWN
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0  # restarts carried out (any reason)
    failures: int = 0  # consecutive failed runs, for backoff and max_retries
    exit_code: int | None = None
    exit_signal: int | None = None
    exited_at: float | None = None
    next_retry_at: float | None = None
    health: Health = Health.NONE
    health_failures: int = 0  # consecutive failed health probes
    health_checked_at: float | None = None
    message: str = ""
    restart_token: str | None = None  # the last restart request carried out
    updated_at: float | None = None


def iso_utc(ts: float | None) -> str | None:
    """Epoch seconds -> "2026-11-23T18:00:00.123Z" (the contract's time format)."""
    if ts is None:
        return None
    import datetime

    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
