"""Spec files -> Spec / Desired: golden error lines, semantics, ignore rules, cache, security."""

from __future__ import annotations

import json
import os
import signal
import tomli
from pathlib import Path

import attrs
import orjson
import pytest
import yaml

from reconciler.convert import parse_cpu_quota, parse_duration, parse_signal, parse_size, parse_spec
from reconciler.errors import SpecError
from reconciler.model import (
    Desired,
    HealthCheck,
    HealthType,
    LogSettings,
    OnUnhealthy,
    Resources,
    RestartPolicy,
    RestartSettings,
    Spec,
    SpecProblem,
    StopSettings,
    spec_from_dict,
    spec_to_dict,
)
from reconciler.specs import SpecReader, is_spec_name, validate_paths

SPECS = "/srv/specs"  # an imaginary specs dir: parsing never touches the file system


def parse(text: str, name: str = "web.toml") -> Spec:
    return parse_spec(text.encode(), path=f"{SPECS}/{name}", specs_dir=SPECS)


def error_of(text: str, name: str = "web.toml") -> str:
    with pytest.raises(SpecError) as caught:
        parse(text, name)
    return str(caught.value)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def specs_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "specs"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    return directory


# --- golden error lines ------------------------------------------------------------

GOLDEN = [
    ('command = ["a"]\n[restart]\nbackoff_max = "30 seconds"\n',
     'restart.backoff_max: expected a duration like "30s", got "30 seconds"'),
    ('command = ["a"]\n[restart]\npolicy = "sometimes"\n', "restart.policy: must be one of always, on-failure, never"),
    ('command = ["a"]\n[restart]\npolcy = "always"\n', "restart.polcy: unknown key"),
    ('command = ["a"]\nenabled = "yes"\n', 'enabled: expected a boolean, got "yes"'),
    ("command = 5\n", "command: expected a list of strings or a string"),
    ('command = ["a", 5]\n', "command[1]: expected a string, got 5"),
    ("command = []\n", "command: must not be empty"),
    ('command = "  "\n', "command: must not be empty"),
    ('name = "web"\n', "command: required"),
    ("", "command: required"),
    ('comand = ["a"]\n', "comand: unknown key"),
    ('command = ["a"]\nrestart = 5\n', "restart: expected a table, got 5"),
    ('command = ["a"]\nname = "Web"\n', 'name: must match [a-z0-9][a-z0-9._-]{0,62}, got "Web"'),
    ('command = ["a"]\nenv = { PORT = 8080 }\n', 'env.PORT: expected a string, got 8080 (write "8080")'),
    ('command = ["a"]\nenv = { DEBUG = true }\n', 'env.DEBUG: expected a string, got true (write "true")'),
    ('command = ["a"]\nenv = ["A=1"]\n', "env: expected a table of strings, got a list"),
    ('command = ["a"]\ncwd = ""\n', "cwd: must not be empty"),
    ('command = ["a"]\ndriver = "k8s"\n', "driver: must be one of auto, posix, systemd, launchd, windows"),
    ('command = ["a"]\ndepends_on = ["web"]\n', 'depends_on: a unit cannot depend on itself ("web")'),
    ('command = ["a"]\ndepends_on = "db"\n', 'depends_on: expected a list of unit names, got "db"'),
    ('command = ["a"]\ndepends_on = ["db", "Bad"]\n', 'depends_on[1]: must match [a-z0-9][a-z0-9._-]{0,62}, got "Bad"'),
    ('command = ["a"]\nuser = 1000\n', "user: expected a string, got 1000"),
    ('command = ["a"]\n[restart]\nbackoff_initial = "1m"\n',
     "restart.backoff_initial: must not be longer than restart.backoff_max (60s > 30s)"),
    ('command = ["a"]\n[restart]\nmax_retries = -1\n', "restart.max_retries: must be between 0 and 2147483647, got -1"),
    ('command = ["a"]\n[restart]\nreset_after = -1\n', "restart.reset_after: must not be negative, got -1"),
    ('command = ["a"]\n[stop]\nsignal = "SIGFOO"\n',
     'stop.signal: expected a signal like "SIGTERM" or its number, got "SIGFOO"'),
    ('command = ["a"]\n[stop]\ntimeout = "10 s"\n', 'stop.timeout: expected a duration like "30s", got "10 s"'),
    ('command = ["a"]\n[health]\ninterval = "1s"\n', "health.type: required"),
    ('command = ["a"]\n[health]\ntype = "grpc"\n', "health.type: must be one of http, tcp, exec"),
    ('command = ["a"]\n[health]\ntype = "http"\n', 'health.url: required for type "http"'),
    ('command = ["a"]\n[health]\ntype = "tcp"\n', 'health.port: required for type "tcp"'),
    ('command = ["a"]\n[health]\ntype = "exec"\n', 'health.command: required for type "exec"'),
    ('command = ["a"]\n[health]\ntype = "http"\nurl = "http://x/"\nport = 80\n',
     'health.port: only for type "tcp", not "http"'),
    ('command = ["a"]\n[health]\ntype = "tcp"\nport = 80\ncommand = ["true"]\n',
     'health.command: only for type "exec", not "tcp"'),
    ('command = ["a"]\n[health]\ntype = "tcp"\nport = 0\n', "health.port: must be between 1 and 65535, got 0"),
    ('command = ["a"]\n[health]\ntype = "tcp"\nport = 80\nretries = 0\n',
     "health.retries: must be between 1 and 2147483647, got 0"),
    ('command = ["a"]\n[health]\ntype = "tcp"\nport = 80\ninterval = "0s"\n', "health.interval: must be greater than 0"),
    ('command = ["a"]\n[health]\ntype = "http"\nurl = "ftp://x/"\n',
     'health.url: expected an http:// or https:// URL, got "ftp://x/"'),
    ('command = ["a"]\n[health]\ntype = "tcp"\nport = 80\non_unhealthy = "panic"\n',
     "health.on_unhealthy: must be one of restart, ignore"),
    ('command = ["a"]\n[logs]\nkeep = -1\n', "logs.keep: must be between 0 and 1000, got -1"),
    ('command = ["a"]\n[logs]\nmax_size = "10 MiB"\n', 'logs.max_size: expected a size like "10MiB", got "10 MiB"'),
    ('command = ["a"]\n[logs]\ncompress = 1\n', "logs.compress: expected a boolean, got 1"),
    ('command = ["a"]\n[resources]\ncpu_quota = 0.5\n',
     'resources.cpu_quota: expected a percentage of one CPU like "50%", got 0.5'),
    ('command = ["a"]\n[resources]\nmemory_max = "0B"\n', "resources.memory_max: must be greater than 0"),
    ('command = ["a"]\n[resources]\nlimit = 1\n', "resources.limit: unknown key"),
    ('command = ["a"]\n"bad key" = 1\n', '"bad key": unknown key'),
]


@pytest.mark.parametrize(("text", "reason"), GOLDEN)
def test_golden_error_lines(text: str, reason: str) -> None:
    assert error_of(text) == f"{SPECS}/web.toml: {reason}"


def test_error_carries_path_field_and_message() -> None:
    with pytest.raises(SpecError) as caught:
        parse('command = ["a"]\n[restart]\npolicy = "sometimes"\n')
    err = caught.value
    assert (err.path, err.field, err.message) == (
        f"{SPECS}/web.toml",
        "restart.policy",
        "must be one of always, on-failure, never",
    )
    assert err.reason() == "restart.policy: must be one of always, on-failure, never"


def test_unknown_key_wins_over_the_missing_key_it_causes() -> None:
    assert error_of('comand = ["a"]\n[restart]\npolicy = "bad"\n') == f"{SPECS}/web.toml: comand: unknown key"


def test_invalid_file_name_without_name_field() -> None:
    assert error_of('command = ["a"]\n', name="My Web.toml") == (
        f'{SPECS}/My Web.toml: name: the file name "My Web" is not a unit name ([a-z0-9][a-z0-9._-]{{0,62}}); set name'
    )


@pytest.mark.parametrize(
    ("name", "data", "load"),
    [
        ("web.toml", "command = [\n", tomli.loads),
        ("web.toml", "command = ['a']\ncommand = 'b'\n", tomli.loads),
        ("web.json", '{"command": [}', json.loads),
    ],
)
def test_syntax_errors_quote_the_parser(name: str, data: str, load) -> None:
    with pytest.raises(ValueError) as parser:
        load(data)
    assert error_of(data, name) == f"{SPECS}/{name}: invalid {'TOML' if name.endswith('toml') else 'JSON'}: {parser.value}"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("web.yaml", "command: [a\n", "invalid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
        ("web.yml", "command: [a]\ncommand: b\n", 'invalid YAML: duplicate key "command" (line 2, column 1)'),
        ("web.json", '{"command": ["a"], "command": "b"}', 'invalid JSON: duplicate key "command"'),
        ("web.json", '{"command": ["a"], "env": {"A": NaN}}', "invalid JSON: NaN is not a JSON number"),
        ("web.json", "[1, 2]", "expected a table of settings at the top level, got a list"),
        ("web.yaml", "", "expected a table of settings at the top level, got an empty document"),
        ("web.yaml", "just text\n", 'expected a table of settings at the top level, got "just text"'),
        ("web.txt", "command = ['a']\n", "unsupported file type .txt; use .toml, .json, .yaml or .yml"),
    ],
)
def test_document_level_errors_have_no_field(name: str, data: str, reason: str) -> None:
    assert error_of(data, name) == f"{SPECS}/{name}: {reason}"


def test_bytes_that_are_not_utf8() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(b'command = ["\xc3("]', path=f"{SPECS}/web.toml", specs_dir=SPECS)
    assert str(caught.value) == f"{SPECS}/web.toml: invalid TOML: not UTF-8 text (byte 0xc3 at offset 12)"


# --- semantics and defaults ---------------------------------------------------------


def test_defaults_are_the_models() -> None:
    assert parse('command = ["sleep", "5"]\n') == Spec(
        name="web", command=("sleep", "5"), cwd=SPECS, path=f"{SPECS}/web.toml"
    )


def test_string_command_runs_under_sh() -> None:
    assert parse('command = "exec sleep 5 > /dev/null"\n').command == ("/bin/sh", "-c", "exec sleep 5 > /dev/null")


@pytest.mark.parametrize(
    ("cwd_line", "cwd"),
    [("", SPECS), ('cwd = "app/www"\n', f"{SPECS}/app/www"), ('cwd = "../data"\n', "/srv/data"), ('cwd = "/var/www/"\n', "/var/www")],
)
def test_cwd_defaults_to_and_resolves_against_the_specs_dir(cwd_line: str, cwd: str) -> None:
    assert parse(f'command = ["a"]\n{cwd_line}', name="group/web.toml").cwd == cwd


FULL_TOML = """
name = "api"
command = ["python3", "-m", "http.server", "8080"]
cwd = "/srv/web"
env = { PYTHONUNBUFFERED = "1", LANG = "C.UTF-8" }
enabled = false
driver = "posix"
depends_on = ["db", "cache", "db"]
user = "www-data"
group = "www-data"

[restart]
policy = "on-failure"
backoff_initial = "250ms"
backoff_max = "5m"
reset_after = 90
max_retries = 4

[stop]
signal = "INT"
timeout = "1h"

[health]
type = "http"
url = "http://127.0.0.1:8080/"
interval = 1.5
timeout = "2s"
retries = 2
start_period = "10s"
on_unhealthy = "ignore"

[logs]
max_size = "512KiB"
keep = 0
compress = true

[resources]
memory_max = "1GB"
cpu_quota = "150%"
"""

FULL_SPEC = Spec(
    name="api",
    command=("python3", "-m", "http.server", "8080"),
    cwd="/srv/web",
    path="",  # set per format below
    env={"PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"},
    enabled=False,
    driver="posix",
    depends_on=("db", "cache"),
    user="www-data",
    group="www-data",
    restart=RestartSettings(RestartPolicy.ON_FAILURE, 0.25, 300.0, 90.0, 4),
    stop=StopSettings(signal.SIGINT, 3600.0),
    health=HealthCheck(
        HealthType.HTTP, url="http://127.0.0.1:8080/", interval=1.5, timeout=2.0, retries=2,
        start_period=10.0, on_unhealthy=OnUnhealthy.IGNORE,
    ),
    logs=LogSettings(max_size=512 * 1024, keep=0, compress=True),
    resources=Resources(memory_max=10**9, cpu_quota=1.5),
)


@pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml", ".yml"])
def test_every_field_in_every_format(suffix: str) -> None:
    document = tomli.loads(FULL_TOML)
    text = {
        ".toml": FULL_TOML,
        ".json": json.dumps(document),
        ".yaml": yaml.safe_dump(document),
        ".yml": yaml.safe_dump(document, default_flow_style=True),
    }[suffix]
    spec = parse(text, name="api" + suffix)
    assert spec == attrs.evolve(FULL_SPEC, path=f"{SPECS}/api{suffix}")
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_hashes_stay_what_ledgers_already_hold() -> None:
    """Ledgers keep content hashes (the spec_files table) and status shows the process hash:
    a change in how a spec is hashed re-parses every file once and changes `spec_hash`."""
    spec = attrs.evolve(FULL_SPEC, path=f"{SPECS}/api.toml")
    data = spec_to_dict(spec)
    assert data["stop"] == {"signal": "SIGINT", "timeout": 3600.0}
    assert data["restart"]["policy"] == "on-failure" and data["health"]["on_unhealthy"] == "ignore"
    assert spec.content_hash == "sha256:66d90410b3d7a48bf56b79f6ecea56b2cae0e0d880020ac91166af74a9493e1f"
    assert spec.process_hash == "sha256:badac4a8642bd38a52338a0b3b34ddd1f2297023b6c80bbf3ea86b8c8d34d26a"
    # A spec loaded from the ledger takes its content hash from the stored form: the same hash.
    assert spec_from_dict(orjson.loads(orjson.dumps(data))).content_hash == spec.content_hash
    # A stored form from before a field existed is hashed as the spec it loads as, not as stored.
    older = orjson.loads(orjson.dumps(data))
    del older["resources"]["cpu_quota"]
    loaded = spec_from_dict(older)
    assert loaded.content_hash == attrs.evolve(loaded).content_hash != spec.content_hash


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ('type = "tcp"\nport = 5432\n', HealthCheck(HealthType.TCP, port=5432)),
        ('type = "exec"\ncommand = ["pg_isready"]\n', HealthCheck(HealthType.EXEC, command=("pg_isready",))),
        ('type = "exec"\ncommand = "pg_isready -q"\n', HealthCheck(HealthType.EXEC, command=("/bin/sh", "-c", "pg_isready -q"))),
    ],
)
def test_health_check_types(health: str, expected: HealthCheck) -> None:
    assert parse(f'command = ["a"]\n[health]\n{health}').health == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), (0, 0.0), (2.5, 2.5), ("0s", 0.0)],
)
def test_durations(text, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_equal_tables_share_one_settings_object_and_hash_alike() -> None:
    """Settings are shared between specs with equal tables; -0.0 and "0s" are one duration."""
    first = parse('command = ["a"]\n[restart]\nbackoff_initial = -0.0\n', "one.toml")
    second = parse('command = ["b"]\n[restart]\nbackoff_initial = "0s"\n', "two.toml")
    assert first.restart is second.restart
    assert str(parse_duration(-0.0)) == "0.0"
    assert first.content_hash == attrs.evolve(first, restart=attrs.evolve(first.restart)).content_hash
    assert parse('command = ["a"]\n[restart]\nbackoff_initial = "1s"\n').restart.backoff_initial == 1.0


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 512 * 1024), ("10MiB", 10 * 1024**2), ("1GiB", 1024**3), ("3KB", 3000), ("2MB", 2 * 10**6),
     ("1GB", 10**9), ("100B", 100), (4096, 4096)],
)
def test_sizes(text, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("value", "expected"), [("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM),
                                                 ("sigint", signal.SIGINT), (9, signal.SIGKILL)])
def test_signals(value, expected: signal.Signals) -> None:
    assert parse_signal(value) is expected


def test_cpu_quota_is_a_fraction_of_one_cpu() -> None:
    assert (parse_cpu_quota("50%"), parse_cpu_quota("200%"), parse_cpu_quota("12.5%")) == (0.5, 2.0, 0.125)


# --- reading a directory -----------------------------------------------------------


def test_ignore_rules(specs_dir: Path) -> None:
    spec = 'command = ["a"]\n'
    for name in ["web.toml", "sub/deeper/api.yaml", "db.json", "cache.yml"]:
        write(specs_dir / name, spec if name.endswith(".toml") else json.dumps({"command": ["a"]}))
    for name in [".hidden.toml", ".git/config.toml", ".git/x/web.toml", "web.toml~", ".web.toml.swp", ".web.toml.swx",
                 "web.toml.tmp", "web.toml.part", "web.toml.bak", "web.toml.orig", "foo.yaml-bak", "README.md",
                 "notes.txt", "Makefile", ".cache/sub/db.toml"]:
        write(specs_dir / name, "not a spec at all = [")
    desired = SpecReader(specs_dir).read()
    assert (sorted(desired.specs), desired.problems, desired.complete) == (["api", "cache", "db", "web"], (), True)


@pytest.mark.parametrize(
    ("name", "is_spec"),
    [("web.toml", True), ("web.json", True), ("web.yaml", True), ("web.yml", True), ("foo.yaml-bak", False),
     ("web.toml~", False), (".web.toml", False), ("web.toml.swp", False), ("web.TOML", False), ("README.md", False)],
)
def test_is_spec_name(name: str, is_spec: bool) -> None:
    assert is_spec_name(name) is is_spec


def test_paths_are_absolute_and_specs_know_their_file(specs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(specs_dir / "team" / "web.toml", 'command = ["a"]\ncwd = "www"\n')
    monkeypatch.chdir(specs_dir.parent)
    spec = SpecReader(Path("specs")).read().specs["web"]
    assert (spec.path, spec.cwd) == (str(specs_dir / "team" / "web.toml"), str(specs_dir / "www"))


def test_invalid_file_is_a_problem_not_a_spec(specs_dir: Path) -> None:
    write(specs_dir / "web.toml", 'command = ["a"]\n')
    bad = write(specs_dir / "bad.toml", 'command = ["a"]\n[restart]\npolicy = "sometimes"\n')
    desired = SpecReader(specs_dir).read()
    assert list(desired.specs) == ["web"]
    assert desired.problems == (SpecProblem(str(bad), "restart.policy: must be one of always, on-failure, never"),)
    assert desired.complete


def test_a_spec_is_read_up_to_the_size_limit_and_no_further(specs_dir: Path) -> None:
    from reconciler.specs import MAX_SPEC_BYTES

    padding = "#" * (MAX_SPEC_BYTES - len('command = ["a"]\n') - 1) + "\n"
    write(specs_dir / "web.toml", 'command = ["a"]\n' + padding)
    big = write(specs_dir / "big.toml", 'command = ["a"]\n' + padding + "\n")
    desired = SpecReader(specs_dir).read()
    assert os.path.getsize(specs_dir / "web.toml") == MAX_SPEC_BYTES
    assert list(desired.specs) == ["web"]
    assert desired.problems == (SpecProblem(str(big), f"file is larger than {MAX_SPEC_BYTES} bytes"),)


def test_a_file_longer_than_its_fstat_said_is_read_to_its_end_or_the_limit(tmp_path: Path) -> None:
    """A file that grew between its fstat and the read is read whole, still up to the limit."""
    from reconciler.specs import MAX_SPEC_BYTES, _read_up_to

    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"x" * 5000)
    big.write_bytes(b"y" * (MAX_SPEC_BYTES + 100))
    for path, size, expected in ((small, 10, 5000), (small, 5000, 5000), (big, 10, MAX_SPEC_BYTES + 1)):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert len(_read_up_to(fd, size)) == expected
        finally:
            os.close(fd)


def test_a_directory_found_where_a_spec_was_opened_is_a_problem_of_its_file(specs_dir: Path) -> None:
    """A spec replaced by a directory between the scan and the open: one line, no exception."""
    write(specs_dir / "web.toml", 'command = ["a"]\n')
    reader = SpecReader(specs_dir)
    bad = specs_dir / "db.toml"
    bad.mkdir()
    outcome = reader._parse(str(bad))
    assert outcome == SpecProblem(str(bad), "not a regular file")


def test_duplicate_names_invalidate_every_claimant(specs_dir: Path) -> None:
    one = write(specs_dir / "one.toml", 'name = "web"\ncommand = ["a"]\n')
    two = write(specs_dir / "sub" / "web.yaml", "command: [b]\n")
    write(specs_dir / "db.toml", 'command = ["c"]\n')
    desired = SpecReader(specs_dir).read()
    assert list(desired.specs) == ["db"]
    assert desired.problems == (
        SpecProblem(str(one), f'name: duplicate unit name "web" (also in {two})'),
        SpecProblem(str(two), f'name: duplicate unit name "web" (also in {one})'),
    )


def test_a_dependency_cycle_invalidates_each_unit_on_it(specs_dir: Path) -> None:
    a = write(specs_dir / "a.toml", 'command = ["a"]\ndepends_on = ["b"]\n')
    b = write(specs_dir / "b.yaml", "command: [b]\ndepends_on: [a]\n")
    write(specs_dir / "c.toml", 'command = ["c"]\ndepends_on = ["a"]\n')
    write(specs_dir / "db.toml", 'command = ["db"]\n')
    desired = SpecReader(specs_dir).read()
    assert sorted(desired.specs) == ["c", "db"]  # c waits for a, as for any unit not running
    assert desired.problems == (
        SpecProblem(str(a), "depends_on: dependency cycle a → b → a"),
        SpecProblem(str(b), "depends_on: dependency cycle b → a → b"),
    )
    assert validate_paths([specs_dir])[1] == list(desired.problems)


def test_missing_specs_dir_is_incomplete(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert SpecReader(missing).read() == incomplete(missing, "specs directory does not exist")


def test_specs_path_that_is_a_file_is_incomplete(tmp_path: Path) -> None:
    not_dir = write(tmp_path / "specs", "")
    assert SpecReader(not_dir).read() == incomplete(not_dir, "the specs path is not a directory")


def incomplete(path: Path, error: str) -> Desired:
    return Desired(specs={}, problems=(SpecProblem(str(path), error),), complete=False)


def test_empty_dir_is_complete(specs_dir: Path) -> None:
    desired = SpecReader(specs_dir).read()
    assert (desired.specs, desired.problems, desired.complete) == ({}, (), True)


def test_special_files_are_problems_not_hangs(specs_dir: Path) -> None:
    os.mkfifo(specs_dir / "fifo.toml")
    os.symlink(specs_dir / "gone.toml", specs_dir / "dangling.toml")
    desired = SpecReader(specs_dir).read()
    assert desired.problems == (
        SpecProblem(str(specs_dir / "dangling.toml"), "broken symbolic link"),
        SpecProblem(str(specs_dir / "fifo.toml"), "not a regular file"),
    )


def test_symlinked_directories_are_followed_once(specs_dir: Path, tmp_path: Path) -> None:
    write(tmp_path / "elsewhere" / "web.toml", 'command = ["a"]\n')
    os.symlink(tmp_path / "elsewhere", specs_dir / "linked")
    os.symlink(specs_dir, specs_dir / "loop")
    desired = SpecReader(specs_dir).read()
    assert list(desired.specs) == ["web"]
    assert desired.specs["web"].path == str(specs_dir / "linked" / "web.toml")


# --- incremental reading -----------------------------------------------------------


def test_unchanged_files_are_not_parsed_again(specs_dir: Path) -> None:
    for name in ("a", "b", "c"):
        write(specs_dir / f"{name}.toml", 'command = ["sleep", "1"]\n')
    reader = SpecReader(specs_dir)
    first = reader.read()
    assert reader.parse_count == 3
    second = reader.read()
    assert reader.parse_count == 3
    assert all(second.specs[name] is first.specs[name] for name in first.specs)


def test_touched_file_is_parsed_again(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", 'command = ["sleep", "1"]\n')
    reader = SpecReader(specs_dir)
    reader.read()
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    reader.read()
    assert reader.parse_count == 2


def test_changed_file_gives_the_new_spec(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", 'command = ["sleep", "1"]\n')
    reader = SpecReader(specs_dir)
    reader.read()
    path.write_text('command = ["sleep", "2"]\n[restart]\npolicy = "never"\n')
    spec = reader.read().specs["web"]
    assert (spec.command, spec.restart.policy) == (("sleep", "2"), RestartPolicy.NEVER)


def test_invalid_file_stays_invalid_from_cache_and_recovers_when_fixed(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", "command = [\n")
    reader = SpecReader(specs_dir)
    assert [p.path for p in reader.read().problems] == [str(path)]
    assert [p.path for p in reader.read().problems] == [str(path)]
    assert reader.parse_count == 1
    path.write_text('command = ["a"]\n')
    desired = reader.read()
    assert (list(desired.specs), desired.problems) == (["web"], ())


def test_deleted_file_is_gone(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", 'command = ["a"]\n')
    write(specs_dir / "db.toml", 'command = ["b"]\n')
    reader = SpecReader(specs_dir)
    reader.read()
    path.unlink()
    desired = reader.read()
    assert (list(desired.specs), desired.complete) == (["db"], True)


def test_directory_removed_after_a_good_read_makes_the_next_incomplete(specs_dir: Path) -> None:
    write(specs_dir / "web.toml", 'command = ["a"]\n')
    reader = SpecReader(specs_dir)
    assert reader.read().complete
    (specs_dir / "web.toml").unlink()
    specs_dir.rmdir()
    desired = reader.read()
    assert (desired.specs, desired.complete) == ({}, False)


# --- security (sshd StrictModes) -----------------------------------------------------

ROOT_ONLY = frozenset({0})
FIX_MODE = "fix the permissions or use --allow-insecure-specs"
FIX_OWNER = "fix the ownership or use --allow-insecure-specs"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def problems_of(specs_dir: Path, **options) -> list[tuple[str, str]]:
    return [(p.path, p.error) for p in SpecReader(specs_dir, **options).read().problems]


@needs_root
@pytest.mark.parametrize(
    ("mode", "writers"), [(0o666, "others"), (0o602, "others"), (0o664, "group"), (0o620, "group")]
)
def test_writable_file_is_insecure(specs_dir: Path, mode: int, writers: str) -> None:
    path = write(specs_dir / "web.toml", 'command = ["a"]\n', mode=mode)
    assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == [
        (str(path), f"insecure: file is writable by {writers} (mode {mode:04o}); {FIX_MODE}")
    ]


@needs_root
def test_file_owned_by_an_untrusted_uid_is_insecure(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", 'command = ["a"]\n')
    os.chown(path, 65534, -1)
    assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == [
        (str(path), f"insecure: file is owned by uid 65534; {FIX_OWNER}")
    ]
    assert list(SpecReader(specs_dir, trusted_uids=frozenset({0, 65534})).read().specs) == ["web"]


@needs_root
def test_writable_or_foreign_directories_make_their_specs_insecure(specs_dir: Path) -> None:
    top = write(specs_dir / "top.toml", 'command = ["a"]\n')
    nested = write(specs_dir / "team" / "nested.toml", 'command = ["a"]\n')
    (specs_dir / "team").chmod(0o755)
    os.chown(specs_dir / "team", 65534, -1)
    assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == [
        (str(nested), f"insecure: directory {specs_dir / 'team'} is owned by uid 65534; {FIX_OWNER}")
    ]
    specs_dir.chmod(0o777)
    assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == [
        (str(nested), f"insecure: directory {specs_dir / 'team'} is owned by uid 65534; {FIX_OWNER}"),
        (str(top), f"insecure: directory {specs_dir} is writable by others (mode 0777); {FIX_MODE}"),
    ]


@needs_root
def test_directories_above_the_specs_dir_are_not_checked(tmp_path: Path, specs_dir: Path) -> None:
    write(specs_dir / "web.toml", 'command = ["a"]\n')
    tmp_path.chmod(0o777)
    try:
        assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == []
    finally:
        tmp_path.chmod(0o700)


@needs_root
def test_symlink_is_judged_by_its_target(specs_dir: Path, tmp_path: Path) -> None:
    target = write(tmp_path / "shared" / "web.toml", 'command = ["a"]\n', mode=0o666)
    os.symlink(target, specs_dir / "web.toml")
    assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == [
        (str(specs_dir / "web.toml"), f"insecure: file is writable by others (mode 0666); {FIX_MODE}")
    ]
    target.chmod(0o644)
    assert problems_of(specs_dir, trusted_uids=ROOT_ONLY) == []


@needs_root
def test_allow_insecure_and_no_trusted_uids_turn_the_check_off(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", 'command = ["a"]\n', mode=0o666)
    os.chown(path, 65534, -1)
    specs_dir.chmod(0o777)
    for options in ({"trusted_uids": ROOT_ONLY, "allow_insecure": True}, {"trusted_uids": None}):
        desired = SpecReader(specs_dir, **options).read()
        assert (list(desired.specs), desired.problems) == (["web"], ())


@needs_root
def test_fixing_permissions_revalidates_without_a_content_change(specs_dir: Path) -> None:
    path = write(specs_dir / "web.toml", 'command = ["a"]\n', mode=0o666)
    reader = SpecReader(specs_dir, trusted_uids=ROOT_ONLY)
    assert reader.read().specs == {}
    path.chmod(0o644)
    assert list(reader.read().specs) == ["web"]
    path.chmod(0o666)
    assert reader.read().specs == {}


# --- validate -----------------------------------------------------------------------


def test_validate_paths_files_and_directories(tmp_path: Path, specs_dir: Path) -> None:
    write(specs_dir / "web.toml", 'command = ["a"]\n')
    write(specs_dir / "bad.json", '{"command": ["a"], "enabled": "yes"}')
    hidden = write(tmp_path / "loose" / ".hidden.toml", 'name = "hidden"\ncommand = ["a"]\n')
    notes = write(tmp_path / "loose" / "notes.txt", 'command = ["a"]\n')
    missing = tmp_path / "missing.toml"
    specs, problems = validate_paths([specs_dir, hidden, notes, missing])
    assert [(s.name, s.cwd) for s in specs] == [("hidden", str(tmp_path / "loose")), ("web", str(specs_dir))]
    assert problems == sorted(
        [
            SpecProblem(str(specs_dir / "bad.json"), 'enabled: expected a boolean, got "yes"'),
            SpecProblem(str(notes), "unsupported file type .txt; use .toml, .json, .yaml or .yml"),
            SpecProblem(str(missing), "no such file or directory"),
        ],
        key=lambda p: p.path,
    )


def test_validate_paths_finds_duplicates_across_arguments(tmp_path: Path) -> None:
    one = write(tmp_path / "a" / "web.toml", 'command = ["a"]\n')
    two = write(tmp_path / "b" / "web.yaml", "command: [b]\n")
    specs, problems = validate_paths([one, two, one])
    assert specs == []
    assert [p.error for p in problems] == [
        f'name: duplicate unit name "web" (also in {two})',
        f'name: duplicate unit name "web" (also in {one})',
    ]


@needs_root
def test_validate_paths_checks_security_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path / "web.toml", 'command = ["a"]\n', mode=0o664)
    assert validate_paths([path])[1] == []
    assert validate_paths([path], trusted_uids=ROOT_ONLY)[1] == [
        SpecProblem(str(path), f"insecure: file is writable by group (mode 0664); {FIX_MODE}")
    ]
