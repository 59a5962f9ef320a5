"""The ledger: round trips, one transaction per save, and sharing the file between processes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import pytest
from sqlite_utils import Database

from reconciler.ledger import MIGRATION_NAMES, SCHEMA_VERSION, Ledger, SpecMemo, record_to_row
from reconciler.ledger_schema import MIGRATIONS
from reconciler.model import (
    Handle,
    Health,
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
    UnitRecord,
    UnitState,
)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.db"


@pytest.fixture
def ledger(ledger_path: Path):
    with Ledger(ledger_path) as opened:
        yield opened


def full_spec(name: str = "web") -> Spec:
    """A spec with every section away from its defaults."""
    return Spec(
        name=name,
        command=("python3", "-m", "http.server", "8080"),
        cwd="/srv/web",
        path=f"/srv/specs/{name}.toml",
        env={"PYTHONUNBUFFERED": "1", "LANG": "C"},
        enabled=False,
        driver="posix",
        depends_on=("db", "cache"),
        user="www-data",
        group="www-data",
        restart=RestartSettings(RestartPolicy.ON_FAILURE, 0.25, 60.0, 5.0, 3),
        stop=StopSettings(signal.SIGINT, 2.5),
        health=HealthCheck(
            type=HealthType.EXEC,
            command=("pg_isready", "-q"),
            interval=1.5,
            timeout=0.5,
            retries=2,
            start_period=3.0,
            on_unhealthy=OnUnhealthy.IGNORE,
        ),
        logs=LogSettings(max_size=1024, keep=2, compress=True),
        resources=Resources(memory_max=512 * 1024 * 1024, cpu_quota=0.5),
    )


def full_record(name: str = "web") -> UnitRecord:
    """A record with no field left at its default."""
    spec = full_spec(name)
    return UnitRecord(
        name=name,
        spec=spec,
        handle=Handle(
            driver="posix",
            unit=name,
            spec_hash=spec.process_hash,
            pid=4300,
            started_at=1795456800.125,
            data={"boot_id": "abc", "start_ticks": 123456, "shim": {"pid": 4299, "argv": ["a", "b"]}},
        ),
        desired="stopped",
        state=UnitState.BACKOFF,
        pid=4300,
        started_at=1795456800.125,
        restarts=7,
        failures=2,
        exit_code=3,
        exit_signal=9,
        exited_at=1795456801.5,
        next_retry_at=1795456802.75,
        health=Health.UNHEALTHY,
        health_failures=4,
        health_checked_at=1795456801.0,
        message="exited with code 3",
        restart_token="tok-1",
        updated_at=1795456801.5,
    )


def test_every_record_field_differs_from_its_default_in_the_fixture():
    defaults = UnitRecord(name="web")
    record = full_record()
    same = [f.name for f in attrs.fields(UnitRecord) if getattr(record, f.name) == getattr(defaults, f.name)]
    assert same == ["name"]


def test_a_full_record_survives_save_and_load(ledger: Ledger, ledger_path: Path):
    record = full_record()
    ledger.save([record])
    with Ledger(ledger_path) as reopened:
        loaded = reopened.units()["web"]
    assert loaded == record
    assert loaded.spec.health.command == ("pg_isready", "-q")
    assert loaded.spec.stop.signal is signal.SIGINT
    assert loaded.state is UnitState.BACKOFF and loaded.health is Health.UNHEALTHY
    assert loaded.spec.process_hash == record.spec.process_hash
    assert loaded.spec.content_hash == record.spec.content_hash


def test_a_bare_record_with_none_values_survives(ledger: Ledger, ledger_path: Path):
    record = UnitRecord(name="bare")
    ledger.save([record])
    with Ledger(ledger_path) as reopened:
        assert reopened.units() == {"bare": record}


def test_the_units_table_has_a_column_for_every_record_field(ledger: Ledger, ledger_path: Path):
    conn = sqlite3.connect(ledger_path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(units)")}
    finally:
        conn.close()
    assert columns == {f.name for f in attrs.fields(UnitRecord)}


def test_save_replaces_and_forget_removes(ledger: Ledger):
    first = full_record("web")
    ledger.save([first, UnitRecord(name="db")])
    changed = attrs.evolve(first, state=UnitState.RUNNING, handle=None, spec=None, message="")
    ledger.save([changed])
    assert ledger.units() == {"web": changed, "db": UnitRecord(name="db")}
    ledger.forget(["web", "never-was"])
    assert set(ledger.units()) == {"db"}


def test_forget_drops_pending_restart_requests(ledger: Ledger):
    ledger.save([UnitRecord(name="web"), UnitRecord(name="db")])
    ledger.request_restart("web", "t1", 10.0)
    ledger.request_restart("db", "t2", 11.0)
    ledger.forget(["web"])
    assert ledger.restart_requests() == {"db": "t2"}


def test_a_thousand_records_are_saved_in_one_transaction(ledger: Ledger):
    records = [attrs.evolve(full_record(f"unit-{i}"), pid=i) for i in range(1000)]
    statements: list[str] = []
    ledger._conn.set_trace_callback(statements.append)
    ledger.save(records)
    ledger._conn.set_trace_callback(None)
    verbs = [s.split()[0].upper() for s in statements]
    assert verbs.count("BEGIN") == 1
    assert verbs.count("COMMIT") == 1
    assert "ROLLBACK" not in verbs
    assert ledger.units() == {r.name: r for r in records}


def test_a_failing_save_writes_nothing(ledger: Ledger):
    ledger.save([UnitRecord(name="web", message="old")])
    unserialisable = UnitRecord(
        name="db",
        handle=Handle(driver="posix", unit="db", spec_hash="x", pid=1, started_at=None, data={"bad": object()}),
    )
    with pytest.raises(TypeError):
        ledger.save([UnitRecord(name="web", message="new"), unserialisable])
    assert ledger.units() == {"web": UnitRecord(name="web", message="old")}


def test_restart_requests_keep_the_latest_token(ledger: Ledger):
    assert ledger.restart_requests() == {}
    ledger.request_restart("web", "t1", 100.0)
    ledger.request_restart("web", "t2", 101.0)
    ledger.request_restart("db", "t3", 102.0)
    assert ledger.restart_requests() == {"web": "t2", "db": "t3"}


def test_last_pass_is_the_latest_recorded(ledger: Ledger):
    assert ledger.last_pass() is None
    ledger.record_pass(10.0, 10.5, 2, 0)
    ledger.record_pass(20.0, 20.25, 0, 1)
    assert ledger.last_pass() == {"started_at": 20.0, "finished_at": 20.25, "actions": 0, "errors": 1}


def test_record_pass_replaces_the_invalid_specs_when_given(ledger: Ledger):
    assert ledger.problems() == []
    ledger.record_pass(1.0, 2.0, 0, 2, problems=[SpecProblem("/s/z.toml", "bad z"), SpecProblem("/s/a.toml", "bad a")])
    assert ledger.problems() == [SpecProblem("/s/a.toml", "bad a"), SpecProblem("/s/z.toml", "bad z")]
    ledger.record_pass(3.0, 4.0, 1, 0)
    assert len(ledger.problems()) == 2
    ledger.record_pass(5.0, 6.0, 0, 1, problems=[SpecProblem("/s/a.toml", "still bad")])
    assert ledger.problems() == [SpecProblem("/s/a.toml", "still bad")]
    ledger.record_pass(7.0, 8.0, 0, 0, problems=[])
    assert ledger.problems() == []


def test_opening_an_older_ledger_applies_the_missing_migrations(ledger_path: Path):
    ledger_path.parent.mkdir(parents=True)
    db = Database(ledger_path)
    MIGRATIONS.apply(db, stop_before="0002_spec_problems")
    db["units"].insert(record_to_row(full_record(), SpecMemo()))
    db.close()
    with Ledger(ledger_path) as upgraded:
        assert upgraded.units() == {"web": full_record()}
        upgraded.record_pass(1.0, 2.0, 0, 1, problems=[SpecProblem("/s/x.toml", "bad")])
        assert upgraded.problems() == [SpecProblem("/s/x.toml", "bad")]


def test_a_ledger_opened_fresh_is_at_the_schema_version_of_every_migration(ledger: Ledger, ledger_path: Path):
    ledger.save([UnitRecord(name="web")])
    db = Database(ledger_path)
    assert MIGRATIONS.pending(db) == []
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute(f"SELECT count(*) FROM {MIGRATIONS.migrations_table}").fetchone()[0] == SCHEMA_VERSION


def test_a_new_ledger_has_exactly_the_schema_the_migrations_make(ledger: Ledger, ledger_path: Path, tmp_path: Path):
    migrated = Database(tmp_path / "migrated.db")
    MIGRATIONS.apply(migrated)
    new = Database(ledger_path)

    def schema(db: Database) -> list[tuple]:
        return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()

    assert schema(new) == schema(migrated)
    assert [m.name for m in MIGRATIONS.applied(new)] == [m.name for m in MIGRATIONS.applied(migrated)]
    assert list(MIGRATION_NAMES) == [m.name for m in MIGRATIONS.applied(migrated)]


OPEN_TWICE = """
import sys
from pathlib import Path
from reconciler.ledger import Ledger
from reconciler.model import UnitRecord
with Ledger(Path(sys.argv[1])) as ledger:
    ledger.save([UnitRecord(name="web", restarts=int(sys.argv[2]))])
    ledger.record_pass(1.0, 2.0, 0, 0, problems=[])
print("sqlite_utils" in sys.modules)
"""


def test_sqlite_utils_is_loaded_only_to_migrate_an_older_ledger(ledger_path: Path):
    """Its import is most of a cron pass's start-up: a new or current ledger is made, read and written without it."""
    def run(restarts: int) -> str:
        argv = [sys.executable, "-c", OPEN_TWICE, str(ledger_path), str(restarts)]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    assert run(1) == "False"  # created
    assert run(2) == "False"
    with Ledger(ledger_path) as ledger:
        assert ledger.units()["web"].restarts == 2


def test_reconciler_info_round_trips(ledger: Ledger, tmp_path: Path):
    assert ledger.reconciler() is None
    ledger.set_reconciler(4242, "0.1.0", tmp_path / "specs", str(tmp_path / "state"), 1000.5, True)
    ledger.set_reconciler(4242, "0.1.0", tmp_path / "specs", str(tmp_path / "state"), 1000.5, False)
    assert ledger.reconciler() == {
        "pid": 4242,
        "version": "0.1.0",
        "specs_dir": str(tmp_path / "specs"),
        "state_dir": str(tmp_path / "state"),
        "started_at": 1000.5,
        "running": False,
    }


def test_reopening_applies_the_schema_once(ledger_path: Path):
    Ledger(ledger_path).close()
    with Ledger(ledger_path) as again:
        again.save([UnitRecord(name="web")])
    conn = sqlite3.connect(ledger_path)
    try:
        migrations = conn.execute("SELECT name FROM _sqlite_migrations").fetchall()
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert migrations == [("0001_initial",), ("0002_spec_problems",), ("0003_spec_files",)]
    assert journal_mode == "wal"


def test_open_readonly_creates_nothing(tmp_path: Path):
    path = tmp_path / "state" / "ledger.db"
    assert Ledger.open_readonly(path) is None
    assert not path.parent.exists()


def test_readonly_sees_nothing_before_the_schema_exists(tmp_path: Path):
    path = tmp_path / "ledger.db"
    sqlite3.connect(path).close()  # an empty database file, as a daemon creating it leaves it
    with Ledger.open_readonly(path) as readonly:
        assert readonly.units() == {}
        assert readonly.restart_requests() == {}
        assert readonly.last_pass() is None
        assert readonly.reconciler() is None
        assert readonly.problems() == []


def test_readonly_cannot_write(ledger: Ledger, ledger_path: Path):
    with Ledger.open_readonly(ledger_path) as readonly:
        with pytest.raises(sqlite3.OperationalError):
            readonly.save([UnitRecord(name="web")])
    assert ledger.units() == {}


def test_readonly_reads_committed_state_while_a_writer_holds_a_transaction(ledger: Ledger, ledger_path: Path):
    ledger.save([UnitRecord(name="web", message="committed")])
    writer = sqlite3.connect(ledger_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE units SET message = 'in flight'")
        writer.execute("INSERT INTO restart_requests VALUES ('web', 't', 1.0)")
        with Ledger.open_readonly(ledger_path) as readonly:
            assert readonly.units()["web"].message == "committed"
            assert readonly.restart_requests() == {}
            writer.execute("COMMIT")
            assert readonly.units()["web"].message == "in flight"
            assert readonly.restart_requests() == {"web": "t"}
    finally:
        writer.close()


def test_readonly_works_after_the_writer_closed(ledger_path: Path):
    with Ledger(ledger_path) as writer:
        writer.save([full_record()])
    with Ledger.open_readonly(ledger_path) as readonly:
        assert readonly.units() == {"web": full_record()}


def test_a_write_waits_for_another_writer_instead_of_failing(ledger: Ledger, ledger_path: Path):
    other = sqlite3.connect(ledger_path, isolation_level=None)
    outcome: list[BaseException | None] = []

    def request() -> None:
        try:
            ledger.request_restart("web", "cli-token", 5.0)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            outcome.append(exc)
        else:
            outcome.append(None)

    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO units (name, desired, state, restarts, failures, health, health_failures, message)"
                      " VALUES ('db', 'running', 'unknown', 0, 0, 'none', 0, '')")
        thread = threading.Thread(target=request)
        thread.start()
        other.execute("COMMIT")
        thread.join(timeout=15)
    finally:
        other.close()
    assert not thread.is_alive()
    assert outcome == [None]
    assert ledger.restart_requests() == {"web": "cli-token"}
    assert set(ledger.units()) == {"db"}


def test_methods_work_from_worker_threads(ledger: Ledger):
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for round_ in range(20):
                ledger.save([UnitRecord(name=f"t{index}", restarts=round_)])
                ledger.units()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert {name: r.restarts for name, r in ledger.units().items()} == {f"t{i}": 19 for i in range(4)}


WRITER_PROCESS = """
import sys
from pathlib import Path
from sqlite_utils import Database

from reconciler.ledger import Ledger, SpecMemo, record_to_row
from reconciler.ledger_schema import MIGRATIONS
with Ledger(Path(sys.argv[1])) as ledger:
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        ledger.request_restart(f"u{i % 7}", f"token-{i}", float(i))
"""


def test_a_daemon_and_a_cli_process_write_at_once(ledger_path: Path, processes):
    rounds = 300
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_PROCESS, str(ledger_path), str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    processes.append(proc)
    with Ledger(ledger_path) as daemon:
        assert proc.stdout.readline().strip() == "ready"
        saved, deadline = 0, time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            daemon.save([UnitRecord(name=f"u{i}", restarts=saved) for i in range(50)])
            saved += 1
        assert proc.wait(timeout=30) == 0
        assert len(daemon.units()) == 50
        tokens = daemon.restart_requests()
    last = {f"u{i % 7}": f"token-{i}" for i in range(rounds)}
    assert tokens == last


def test_spec_files_round_trip(ledger_path: Path):
    with Ledger(ledger_path) as ledger:
        ledger.save_spec_files({"/s/a.toml": ((1, 2, 3, 4, 5, 6, 7), "sha256:a"), "/s/b.toml": ((8,) * 7, "sha256:b")}, [])
        ledger.save_spec_files({}, ["/s/b.toml"])
        assert ledger.spec_files() == {"/s/a.toml": ((1, 2, 3, 4, 5, 6, 7), "sha256:a")}
