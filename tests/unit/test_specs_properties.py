"""Whatever a spec file holds, parsing gives a Spec or one precise SpecError line, nothing else."""

from __future__ import annotations

import json
import math
import re

import orjson
import yaml
from hypothesis import HealthCheck as Health
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.convert import parse_duration, parse_size, parse_spec
from reconciler.errors import SpecError
from reconciler.model import Spec, spec_from_dict, spec_to_dict

SPECS = "/srv/specs"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[Health.too_slow])

SECTIONS = {
    "restart": ["policy", "backoff_initial", "backoff_max", "reset_after", "max_retries"],
    "stop": ["signal", "timeout"],
    "health": ["type", "url", "port", "command", "interval", "timeout", "retries", "start_period", "on_unhealthy"],
    "logs": ["max_size", "keep", "compress"],
    "resources": ["memory_max", "cpu_quota"],
}
TOP = ["name", "command", "cwd", "env", "enabled", "driver", "depends_on", "user", "group"]
KNOWN_FIELDS = TOP + list(SECTIONS) + [f"{s}.{f}" for s, fields in SECTIONS.items() for f in fields]

_KEY = r'(?:[A-Za-z0-9_-]+|".*")'
_KNOWN = "|".join(re.escape(f) for f in sorted(KNOWN_FIELDS, key=len, reverse=True))
FIELD_RE = re.compile(rf"(?:{_KNOWN})(?:\[\d+\]|\.{_KEY})?")
UNKNOWN_KEY_RE = re.compile(rf"(?:(?:{'|'.join(SECTIONS)})\.)?{_KEY}")


def check(data: bytes, name: str) -> None:
    """The property: a Spec that survives the ledger's round trip, or one well-formed error line."""
    path = f"{SPECS}/{name}"
    try:
        spec = parse_spec(data, path=path, specs_dir=SPECS)
    except SpecError as err:
        line = str(err)
        assert "\n" not in line and "\r" not in line, line
        assert line.startswith(f"{path}: ") and err.message, line
        if err.message == "unknown key":
            assert UNKNOWN_KEY_RE.fullmatch(err.field), line
        elif err.field:
            assert FIELD_RE.fullmatch(err.field), line
        line.encode("utf-8")  # printable on any UTF-8 stream
        return
    assert isinstance(spec, Spec)
    loaded = spec_from_dict(orjson.loads(orjson.dumps(spec_to_dict(spec))))  # as the ledger keeps it
    assert loaded == spec
    assert loaded.content_hash == spec.content_hash and loaded.process_hash == spec.process_hash


# --- random documents -------------------------------------------------------------

PLAUSIBLE = st.sampled_from([
    "10s", "250ms", "5m", "1h", "30 seconds", "-1s", "10MiB", "1GB", "0B", "50%", "0%", "abc%", "SIGTERM", "TERM",
    "SIGFOO", "always", "on-failure", "never", "http", "tcp", "exec", "restart", "ignore", "auto", "posix", "k8s",
    "http://127.0.0.1:8080/", "ftp://x", "web", "db", "Web", "", " ", "echo hi", "/srv", "rel/dir", "A=B", "\0",
])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | PLAUSIBLE
)
KEYS = st.sampled_from(TOP + list(SECTIONS) + [f for fields in SECTIONS.values() for f in fields]) | st.text(max_size=8)


def values(scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
        max_leaves=8,
    )


def section(name: str, scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(SECTIONS[name]) | KEYS, values(scalars), max_size=5)


def documents(scalars: st.SearchStrategy = SCALARS) -> st.SearchStrategy:
    top = st.dictionaries(st.sampled_from(TOP) | KEYS, values(scalars), max_size=6)
    sections = st.fixed_dictionaries({}, optional={s: section(s, scalars) for s in SECTIONS})
    good_command = st.fixed_dictionaries({}, optional={"command": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3)})
    return st.tuples(top, sections, good_command).map(lambda parts: {**parts[0], **parts[1], **parts[2]})


def to_toml(value, top: bool = True) -> str:
    """A tiny TOML writer (inline tables only): enough to feed random documents to the TOML parser."""
    if isinstance(value, dict):
        items = [f"{toml_string(str(k))} = {to_toml(v, False)}" for k, v in value.items()]
        return "\n".join(items) + "\n" if top else "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v, False) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    return str(value)


def toml_string(text: str) -> str:
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x10000 and not 0xD800 <= ord(c) < 0xE000 else "?" for c in text)
    return f'"{escaped}"'


def without_nulls(value):
    """TOML has no null."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value if v is not None]
    return value


@FAST
@given(st.binary(max_size=200), st.sampled_from(["web.toml", "web.json", "web.yaml"]))
def test_random_bytes(data: bytes, name: str) -> None:
    check(data, name)


def serialise(document: dict, fmt: str) -> tuple[bytes, str]:
    if fmt == "json":
        return json.dumps(document).encode(), "web.json"
    if fmt == "yaml":
        return yaml.safe_dump(document, allow_unicode=True).encode(), "web.yml"
    return to_toml(without_nulls(document)).encode(), "web.toml"


FORMAT_NAMES = st.sampled_from(["json", "yaml", "toml"])


@FAST
@given(documents(), FORMAT_NAMES)
def test_random_documents(document: dict, fmt: str) -> None:
    check(*serialise(document, fmt))


@FAST
@given(st.sampled_from(KNOWN_FIELDS), values(SCALARS), FORMAT_NAMES)
def test_random_value_for_each_known_field(field: str, value, fmt: str) -> None:
    document: dict = {"command": ["true"]}
    section, _, key = field.rpartition(".")
    (document.setdefault(section, {}) if section else document)[key] = value
    check(*serialise(document, fmt))


@FAST
@given(st.text(max_size=300), st.sampled_from(["web.toml", "web.json", "web.yaml"]))
def test_random_text(text: str, name: str) -> None:
    check(text.encode("utf-8", "surrogatepass"), name)


# --- the value syntaxes --------------------------------------------------------------


@FAST
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]))
def test_duration_units(number: int, unit: tuple[str, float]) -> None:
    suffix, factor = unit
    if number * factor <= 365 * 24 * 3600:
        assert parse_duration(f"{number}{suffix}") == number * factor


@FAST
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["B", "KB", "MB", "GB", "KiB", "MiB", "GiB"]))
def test_size_units(number: int, unit: str) -> None:
    factor = {"B": 1, "KB": 1000, "MB": 10**6, "GB": 10**9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]
    assert parse_size(f"{number}{unit}") == number * factor
