"""Spec file content -> `model.Spec`: syntax, one cattrs converter, and the checks types cannot say.

Structuring goes through a private "file schema" (attrs classes that mirror the file,
with one marker type per value syntax: durations, sizes, signals...) so every hook
knows what its value means; `_build` then applies the cross-field rules and makes
the model `Spec`. Every problem a user can cause becomes a `SpecError` whose text is
one line, `<path>: <field.path>: <message>`. Anything else is a bug and propagates.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import tomli
from collections.abc import Mapping
from typing import Any, NewType
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from .driver import driver_names
from .errors import SpecError
from .model import (
    NAME_PATTERN,
    SPEC_FORMATS,
    HealthCheck,
    HealthType,
    LogSettings,
    OnUnhealthy,
    Resources,
    RestartPolicy,
    RestartSettings,
    Spec,
    StopSettings,
)

# Extension -> format name used in syntax errors.
FORMATS = SPEC_FORMATS

BUILTIN_DRIVERS = ("auto", "posix", "systemd", "launchd", "windows")
NAME_RULE = NAME_PATTERN.strip("^$")
SHELL = ("/bin/sh", "-c")

# Upper bounds keep every value storable (sqlite, orjson: 64-bit ints) and usable as a
# timeout (threading refuses very large ones).
MAX_DURATION = 365 * 24 * 3600.0
MAX_COUNT = 2**31 - 1
MAX_KEEP = 1000
MAX_SIZE = 2**63 - 1
MAX_CPU_PERCENT = 100_000

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_SIZE_RE = re.compile(r"([0-9]+)(B|KB|MB|GB|KiB|MiB|GiB)")
_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)%")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class InvalidValue(ValueError):
    """A value a spec file may not have. `subpath` extends the field path (list index, env key)."""

    def __init__(self, message: str, subpath: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.subpath = subpath


class _SyntaxProblem(Exception):
    """The document cannot be parsed at all (before any field exists)."""


# --- how values are shown in messages (always one line) ---------------------


def quote(text: str) -> str:
    """JSON-style quoting: escapes newlines and control characters, keeps the line single."""
    quoted = json.dumps(text, ensure_ascii=False)
    try:
        quoted.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \u escapes
        quoted = json.dumps(text)
    return quoted


def show(value: Any) -> str:
    """A short rendering of a wrong value for `got ...`."""
    if isinstance(value, str):
        return quote(value if len(value) <= 40 else value[:40] + "…")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__} value"


def _seconds(value: float) -> str:
    return f"{value:g}s"


# --- value syntax (public: the CLI may parse options the same way) ----------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value: Any) -> float:
    """"250ms", "10s", "5m", "1h" or a number of seconds -> float seconds (0 <= d <= 1 year)."""
    if _is_number(value) and not (isinstance(value, float) and not math.isfinite(value)):
        seconds = float(value) if isinstance(value, float) or value.bit_length() <= 64 else math.inf
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise InvalidValue(f'expected a duration like "30s", got {show(value)}')
    if seconds < 0:
        raise InvalidValue(f"must not be negative, got {show(value)}")
    if seconds > MAX_DURATION:
        raise InvalidValue(f"must be at most 8760h (one year), got {show(value)}")
    return seconds + 0.0  # -0.0 is 0.0: equal durations are then written alike


def parse_size(value: Any) -> int:
    """"512KiB", "10MiB", "1GiB", "10MB" (powers of 1000), "100B" or a number of bytes -> int bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        digits = match[1]  # bounded first: int() refuses thousands of digits
        size = int(digits) * _SIZE_UNITS[match[2]] if len(digits) <= 30 else MAX_SIZE + 1
    else:
        raise InvalidValue(f'expected a size like "10MiB", got {show(value)}')
    if size < 0:
        raise InvalidValue(f"must not be negative, got {show(value)}")
    if size > MAX_SIZE:
        raise InvalidValue(f"must be at most {MAX_SIZE} bytes, got {show(value)}")
    return size


def parse_signal(value: Any) -> signal.Signals:
    """"SIGTERM", "TERM" (any case) or a signal number -> signal.Signals."""
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signal.Signals.__members__:
            return signal.Signals[name]
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            pass
    raise InvalidValue(f'expected a signal like "SIGTERM" or its number, got {show(value)}')


def parse_cpu_quota(value: Any) -> float:
    """"50%" -> 0.5: a fraction of one CPU ("200%" is two CPUs)."""
    match = _PERCENT_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidValue(f'expected a percentage of one CPU like "50%", got {show(value)}')
    percent = float(match[1])
    if not 0 < percent <= MAX_CPU_PERCENT:
        raise InvalidValue(f"must be more than 0% and at most {MAX_CPU_PERCENT}%, got {show(value)}")
    return percent / 100


# --- marker types of the file schema and their hooks ------------------------

Duration = NewType("Duration", float)
PositiveDuration = NewType("PositiveDuration", float)
Size = NewType("Size", int)
Count = NewType("Count", int)
Keep = NewType("Keep", int)
Retries = NewType("Retries", int)
Port = NewType("Port", int)
CpuQuota = NewType("CpuQuota", float)
SignalValue = NewType("SignalValue", signal.Signals)
Text = NewType("Text", str)
UnitName = NewType("UnitName", str)
UnitNames = NewType("UnitNames", tuple)
DriverName = NewType("DriverName", str)
Command = NewType("Command", tuple)
EnvTable = NewType("EnvTable", tuple)
HttpUrl = NewType("HttpUrl", str)


def _string(value: Any) -> str:
    """Strict: only real strings, and only ones a process (and orjson) can take."""
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string, got {show(value)}")
    if "\0" in value:
        raise InvalidValue("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue("must be valid UTF-8 text") from None
    return value


def _text(value: Any) -> str:
    if not _string(value):
        raise InvalidValue("must not be empty")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"expected a boolean, got {show(value)}")
    return value


def _integer(low: int, high: int) -> Any:
    def hook(value: Any, _type: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidValue(f"expected an integer, got {show(value)}")
        if not low <= value <= high:
            raise InvalidValue(f"must be between {low} and {high}, got {show(value)}")
        return value

    return hook


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise InvalidValue("must be greater than 0")
    return seconds


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size == 0:
        raise InvalidValue("must be greater than 0")
    return size


def _unit_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise InvalidValue(f"must match {NAME_RULE}, got {show(value)}")
    return value


def _unit_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidValue(f"expected a list of unit names, got {show(value)}")
    names = []
    for index, item in enumerate(value):
        try:
            names.append(_unit_name(item))
        except InvalidValue as exc:
            raise InvalidValue(exc.message, (index,)) from None
    return tuple(dict.fromkeys(names))


@functools.cache
def _known_drivers() -> tuple[str, ...]:
    return BUILTIN_DRIVERS + tuple(n for n in driver_names() if n not in BUILTIN_DRIVERS)


def _driver_name(value: Any) -> str:
    if value in BUILTIN_DRIVERS:
        return value
    if isinstance(value, str) and value in _known_drivers():
        return value
    raise InvalidValue("must be one of " + ", ".join(_known_drivers()))


def _command(value: Any) -> tuple[str, ...]:
    """argv list, or a shell command line (run by /bin/sh -c)."""
    if isinstance(value, str):
        if not _string(value).strip():
            raise InvalidValue("must not be empty")
        return (*SHELL, value)
    if not isinstance(value, list):
        raise InvalidValue("expected a list of strings or a string")
    if not value:
        raise InvalidValue("must not be empty")
    argv = []
    for index, item in enumerate(value):
        try:
            argv.append(_string(item))
        except InvalidValue as exc:
            raise InvalidValue(exc.message, (index,)) from None
    if not argv[0]:
        raise InvalidValue("must not be empty (the program to run)", (0,))
    return tuple(argv)


def _env_table(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise InvalidValue(f"expected a table of strings, got {show(value)}")
    pairs = []
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidValue(f"invalid variable name {show(key)}")
        try:
            _string(key)
            if _is_number(item) or isinstance(item, bool):
                raise InvalidValue(f"expected a string, got {show(item)} (write {quote(show(item))})")
            pairs.append((key, _string(item)))
        except InvalidValue as exc:
            raise InvalidValue(exc.message, (key,)) from None
    return tuple(sorted(pairs))


def _http_url(value: Any) -> str:
    url = _string(value)
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidValue(f"expected an http:// or https:// URL, got {show(value)}")
    return url


def _choice(value: Any, enum_type: Any) -> Any:
    values = [member.value for member in enum_type]
    if not isinstance(value, str) or value not in values:
        raise InvalidValue("must be one of " + ", ".join(values))
    return enum_type(value)


def _default(cls: type, name: str) -> Any:
    """The model's default for a field: the model is the one place defaults live."""
    return attrs.fields_dict(cls)[name].default


# --- the file schema ---------------------------------------------------------


@attrs.frozen
class _RestartFile:
    policy: RestartPolicy = _default(RestartSettings, "policy")
    backoff_initial: Duration = _default(RestartSettings, "backoff_initial")
    backoff_max: Duration = _default(RestartSettings, "backoff_max")
    reset_after: Duration = _default(RestartSettings, "reset_after")
    max_retries: Count = _default(RestartSettings, "max_retries")


@attrs.frozen
class _StopFile:
    signal: SignalValue = _default(StopSettings, "signal")
    timeout: Duration = _default(StopSettings, "timeout")


@attrs.frozen
class _HealthFile:
    type: HealthType
    url: HttpUrl | None = None
    port: Port | None = None
    command: Command | None = None
    interval: PositiveDuration = _default(HealthCheck, "interval")
    timeout: PositiveDuration = _default(HealthCheck, "timeout")
    retries: Retries = _default(HealthCheck, "retries")
    start_period: Duration = _default(HealthCheck, "start_period")
    on_unhealthy: OnUnhealthy = _default(HealthCheck, "on_unhealthy")


@attrs.frozen
class _LogsFile:
    max_size: Size = _default(LogSettings, "max_size")
    keep: Keep = _default(LogSettings, "keep")
    compress: bool = _default(LogSettings, "compress")


@attrs.frozen
class _ResourcesFile:
    memory_max: Size | None = None
    cpu_quota: CpuQuota | None = None


@attrs.frozen
class _SpecFile:
    command: Command
    name: UnitName | None = None
    cwd: Text | None = None
    env: EnvTable = ()
    enabled: bool = _default(Spec, "enabled")
    driver: DriverName = _default(Spec, "driver")
    depends_on: UnitNames = ()
    user: Text | None = None
    group: Text | None = None
    restart: _RestartFile = _RestartFile()
    stop: _StopFile = _StopFile()
    health: _HealthFile | None = None
    logs: _LogsFile = _LogsFile()
    resources: _ResourcesFile = _ResourcesFile()


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def table_hook(cls: type, conv: cattrs.Converter) -> Any:
        structure = make_dict_structure_fn(cls, conv)

        def hook(value: Any, _type: Any) -> Any:
            if not isinstance(value, Mapping):
                raise InvalidValue(f"expected a table, got {show(value)}")
            return structure(value, _type)

        return hook

    converter.register_structure_hook_factory(attrs.has, table_hook)
    simple = {
        bool: _boolean,
        Text: _text,
        Duration: parse_duration,
        PositiveDuration: _positive_duration,
        Size: _positive_size,
        CpuQuota: parse_cpu_quota,
        SignalValue: parse_signal,
        UnitName: _unit_name,
        UnitNames: _unit_names,
        DriverName: _driver_name,
        Command: _command,
        EnvTable: _env_table,
        HttpUrl: _http_url,
    }
    for marker, parse in simple.items():
        converter.register_structure_hook(marker, lambda value, _type, parse=parse: parse(value))
    converter.register_structure_hook(Count, _integer(0, MAX_COUNT))
    converter.register_structure_hook(Keep, _integer(0, MAX_KEEP))
    converter.register_structure_hook(Retries, _integer(1, MAX_COUNT))
    converter.register_structure_hook(Port, _integer(1, 65535))
    for enum_type in (RestartPolicy, HealthType, OnUnhealthy):
        converter.register_structure_hook(enum_type, _choice)
    return converter


CONVERTER = _make_converter()


# --- cattrs errors -> one line -------------------------------------------------


def _field_path(parts: tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            key = str(part)
            key = key if _PLAIN_KEY_RE.fullmatch(key) else quote(key)
            text += f".{key}" if text else key
    return text


def _first_problem(exc: BaseException, at: tuple[str | int, ...] = ()) -> tuple[str, str]:
    """The first problem in a cattrs error tree as (field.path, message).

    Unknown keys come first: a typo (`comand`) also makes a required key missing,
    and the typo is what the user must fix.
    """
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for inner in without:
            return _first_problem(inner, at)
        for inner, note in with_notes:
            if isinstance(inner, KeyError) and inner.args == (note.name,):
                return _field_path((*at, note.name)), "required"
            return _first_problem(inner, (*at, note.name))
    if isinstance(exc, ForbiddenExtraKeysError):
        first = min(str(key) for key in exc.extra_fields)
        return _field_path((*at, first)), "unknown key"
    if isinstance(exc, InvalidValue):
        return _field_path((*at, *exc.subpath)), exc.message
    raise exc  # a bug in a hook, not a problem of the file


# --- document -> Spec ----------------------------------------------------------


def parse_spec(data: bytes, *, path: str, specs_dir: str) -> Spec:
    """Parse a spec file's bytes (format from the extension of `path`) into a Spec.

    `path` is the file's absolute path; `specs_dir` is where a relative (or
    missing) cwd points to. Raises SpecError.
    """
    fmt = FORMATS.get(os.path.splitext(path)[1])
    if fmt is None:
        suffix = os.path.splitext(path)[1] or "(none)"
        raise SpecError(path, "", f"unsupported file type {suffix}; use .toml, .json, .yaml or .yml")
    try:
        document = parse_document(data, fmt)
    except _SyntaxProblem as exc:
        raise SpecError(path, "", f"invalid {fmt}: {exc}") from None
    return structure_spec(document, path=path, specs_dir=specs_dir)


def structure_spec(document: Any, *, path: str, specs_dir: str) -> Spec:
    """A parsed document (dict from TOML/JSON/YAML) -> Spec. Raises SpecError."""
    if not isinstance(document, Mapping):
        got = "an empty document" if document is None else show(document)
        raise SpecError(path, "", f"expected a table of settings at the top level, got {got}")
    try:
        file = CONVERTER.structure(document, _SpecFile)
    except ClassValidationError as exc:
        field, message = _first_problem(exc)
        raise SpecError(path, field, message) from None
    return _build(file, path, specs_dir)


def _build(file: _SpecFile, path: str, specs_dir: str) -> Spec:
    """The rules that span fields, and the final model Spec."""

    def fail(field: str, message: str) -> SpecError:
        return SpecError(path, field, message)

    name = file.name
    if name is None:
        name = os.path.splitext(os.path.basename(path))[0]
        if not re.fullmatch(NAME_PATTERN, name):
            raise fail("name", f"the file name {quote(name)} is not a unit name ({NAME_RULE}); set name")
    if name in file.depends_on:
        raise fail("depends_on", f"a unit cannot depend on itself ({quote(name)})")
    restart = file.restart
    if restart.backoff_initial > restart.backoff_max:
        raise fail(
            "restart.backoff_initial",
            f"must not be longer than restart.backoff_max "
            f"({_seconds(restart.backoff_initial)} > {_seconds(restart.backoff_max)})",
        )
    return Spec(
        name=name,
        command=file.command,
        cwd=os.path.normpath(os.path.join(specs_dir, file.cwd or ".")),
        path=path,
        env=file.env,
        enabled=file.enabled,
        driver=file.driver,
        depends_on=file.depends_on,
        user=file.user,
        group=file.group,
        restart=_settings(restart, RestartSettings),
        stop=_settings(file.stop, StopSettings),
        health=None if file.health is None else _build_health(file.health, fail),
        logs=_settings(file.logs, LogSettings),
        resources=_settings(file.resources, Resources),
    )


@functools.lru_cache(maxsize=1024)
def _settings(table: Any, model: type) -> Any:
    """The model's settings object for a table of the file.

    Specs share a few distinct tables (most keep the defaults), and both sides are
    frozen, so equal tables get one shared object: building it field by field
    took a tenth of parsing a spec. Equal means the same JSON here, as every
    hook returns one type per field and a duration is never -0.0.
    """
    return model(**attrs.asdict(table, recurse=False))


# Each health check type needs exactly one target field.
_HEALTH_TARGET = {HealthType.HTTP: "url", HealthType.TCP: "port", HealthType.EXEC: "command"}


def _build_health(health: _HealthFile, fail: Any) -> HealthCheck:
    kind = health.type.value
    for other, field in _HEALTH_TARGET.items():
        if other is not health.type and getattr(health, field) is not None:
            raise fail(f"health.{field}", f'only for type "{other.value}", not "{kind}"')
    target = _HEALTH_TARGET[health.type]
    if getattr(health, target) is None:
        raise fail(f"health.{target}", f'required for type "{kind}"')
    return HealthCheck(**attrs.asdict(health, recurse=False))


# --- syntax ----------------------------------------------------------------------


def parse_document(data: bytes, fmt: str) -> Any:
    """Bytes -> the parsed document. Raises _SyntaxProblem with a one-line message."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _SyntaxProblem(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        if fmt == "TOML":
            return tomli.loads(text)
        if fmt == "JSON":
            return json.loads(text, object_pairs_hook=_unique_json_keys, parse_constant=_reject_json_constant)
        return _parse_yaml(text)
    except ValueError as exc:  # TOMLDecodeError, JSONDecodeError
        raise _SyntaxProblem(_one_line(exc)) from None
    except RecursionError:
        raise _SyntaxProblem("nested too deeply") from None


def _parse_yaml(text: str) -> Any:
    import yaml  # only YAML specs pay for its import (~30 ms)

    try:
        return yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise _SyntaxProblem(_yaml_message(exc)) from None
    except yaml.YAMLError as exc:
        raise _SyntaxProblem(_one_line(exc)) from None


def _one_line(exc: Exception) -> str:
    message = re.sub(r'\s+in "<unicode string>",', " at", str(exc))
    return " ".join(message.split())


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, value in pairs:
        if key in table:
            raise _SyntaxProblem(f"duplicate key {quote(key)}")
        table[key] = value
    return table


def _reject_json_constant(name: str) -> None:
    raise _SyntaxProblem(f"{name} is not a JSON number")


def _yaml_message(exc: Any) -> str:
    problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
    mark = exc.problem_mark or exc.context_mark
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


@functools.cache
def _strict_yaml_loader() -> type:
    """SafeLoader that refuses duplicate keys: a repeated key must not silently win."""
    import yaml

    class StrictYamlLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen = set()
            for key_node, _value in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {quote(key_node.value)}", key_node.start_mark
                        )
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep=deep)

    return StrictYamlLoader
