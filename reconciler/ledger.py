"""The status ledger: what the reconciler remembers between passes and restarts.

One SQLite file in WAL mode, so `reconciler status` can read while the daemon
writes, and a busy timeout so a CLI process (`reconciler restart`) and the
daemon can both write. The process is the truth; the ledger only keeps the
handles to find it again and the history the planner needs.

All methods are synchronous and serialised by a lock: the loop calls them from
worker threads, never two at once on one connection.

The schema is sqlite-utils' named migrations (ledger_schema.py), applied only
when an existing file's `user_version` says it is behind; a new file gets the
schema they make written out (FRESH_SCHEMA). Importing sqlite-utils is about
100 ms, most of a cron pass's start-up. Rows are written with plain upserts
over the same connection.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
import stat
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator

import attrs
import orjson

from .errors import StateError
from .model import Handle, Health, Spec, SpecProblem, UnitRecord, UnitState, spec_from_dict, spec_to_dict
from .statedir import make_dir

# Long enough to outlast any one write of the other process (a pass saves
# thousands of rows in well under a second); short enough to report a wedged peer.
BUSY_TIMEOUT_SECONDS = 10.0
# The migrations of ledger_schema.py, in order; a file whose user_version is lower gets those it lacks.
MIGRATION_SET = "reconciler.ledger"
MIGRATION_NAMES = ("0001_initial", "0002_spec_problems", "0003_spec_files")
SCHEMA_VERSION = len(MIGRATION_NAMES)
# A new file gets the schema the migrations would leave, in one go: every first start
# of a container would otherwise import sqlite-utils (about 100 ms) to make it.
# tests/unit/test_ledger.py holds this equal to what the migrations make.
FRESH_SCHEMA = (
    """CREATE TABLE "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
)""",
    """CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name")""",
    """CREATE TABLE "units" (
   "name" TEXT PRIMARY KEY,
   "spec" TEXT,
   "handle" TEXT,
   "desired" TEXT NOT NULL,
   "state" TEXT NOT NULL,
   "pid" INTEGER,
   "started_at" REAL,
   "restarts" INTEGER NOT NULL,
   "failures" INTEGER NOT NULL,
   "exit_code" INTEGER,
   "exit_signal" INTEGER,
   "exited_at" REAL,
   "next_retry_at" REAL,
   "health" TEXT NOT NULL,
   "health_failures" INTEGER NOT NULL,
   "health_checked_at" REAL,
   "message" TEXT NOT NULL,
   "restart_token" TEXT,
   "updated_at" REAL
)""",
    """CREATE TABLE "restart_requests" (
   "name" TEXT PRIMARY KEY,
   "token" TEXT,
   "requested_at" REAL
)""",
    """CREATE TABLE "last_pass" (
   "id" INTEGER PRIMARY KEY,
   "started_at" REAL,
   "finished_at" REAL,
   "actions" INTEGER,
   "errors" INTEGER
)""",
    """CREATE TABLE "reconciler" (
   "id" INTEGER PRIMARY KEY,
   "pid" INTEGER,
   "version" TEXT,
   "specs_dir" TEXT,
   "state_dir" TEXT,
   "started_at" REAL,
   "running" INTEGER
)""",
    """CREATE TABLE "spec_problems" (
   "path" TEXT PRIMARY KEY,
   "error" TEXT
)""",
    """CREATE TABLE "spec_files" (
   "path" TEXT PRIMARY KEY,
   "stat_key" TEXT,
   "content_hash" TEXT
)""",
)


class SpecMemo:
    """Spec <-> JSON text, remembered per unit name.

    Serialising a Spec costs far more than the SQL around it; specs are frozen
    and the loop hands the same Spec objects back pass after pass, so an
    identity (or text) match reuses the last conversion.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[Spec, str]] = {}

    def to_text(self, name: str, spec: Spec) -> str:
        last = self._last.get(name)
        if last is not None and last[0] is spec:
            return last[1]
        text = orjson.dumps(spec_to_dict(spec)).decode()
        self._last[name] = (spec, text)
        return text

    def from_text(self, name: str, text: str) -> Spec:
        last = self._last.get(name)
        if last is not None and last[1] == text:
            return last[0]
        spec = spec_from_dict(orjson.loads(text))
        self._last[name] = (spec, text)
        return spec

    def forget(self, name: str) -> None:
        self._last.pop(name, None)


def record_to_row(record: UnitRecord, specs: SpecMemo) -> dict[str, Any]:
    """A UnitRecord as a `units` row: spec and handle as JSON text, enums by value."""
    row = attrs.asdict(record, recurse=False)
    row["spec"] = None if record.spec is None else specs.to_text(record.name, record.spec)
    row["handle"] = None if record.handle is None else orjson.dumps(record.handle.to_json()).decode()
    row["state"] = record.state.value
    row["health"] = record.health.value
    return row


def record_from_row(row: dict[str, Any], specs: SpecMemo) -> UnitRecord:
    """The inverse of `record_to_row`."""
    name = row["name"]
    return UnitRecord(
        **{
            **row,
            "spec": None if row["spec"] is None else specs.from_text(name, row["spec"]),
            "handle": None if row["handle"] is None else Handle.from_json(orjson.loads(row["handle"])),
            "state": UnitState(row["state"]),
            "health": Health(row["health"]),
        }
    )


class Ledger:
    """The ledger file, opened for reading and writing (creating it and its schema if needed)."""

    def __init__(self, path: Path, *, _readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = _readonly
        self._lock = threading.Lock()
        self._specs = SpecMemo()
        if _readonly:
            target, uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=ro", True
        else:
            make_dir(self.path.parent, "the state directory")
            target, uri = str(self.path), False
        conn = None
        try:
            conn = self._conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
            self._prepare()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise StateError(f"{self.path}: cannot open the ledger: {exc}") from None

    def _prepare(self) -> None:
        """Reads the schema version first: a file that is no database says so here, not mid-command."""
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if self.readonly:
            return
        self._conn.execute("PRAGMA journal_mode=wal")
        # Safe in WAL mode (no corruption on power loss, at worst the last
        # commits are lost) and it spares an fsync per pass.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        if version < SCHEMA_VERSION:
            self._create_or_migrate()

    def _create_or_migrate(self) -> None:
        """The schema at SCHEMA_VERSION: written out on a new file, else by the missing migrations.

        Decided under the write lock: of two processes opening a new file at once, the second
        finds the first's schema.
        """
        with self._transaction() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                for statement in FRESH_SCHEMA:
                    conn.execute(statement)
                applied_at = str(datetime.datetime.now(datetime.timezone.utc))
                rows = [(MIGRATION_SET, name, applied_at) for name in MIGRATION_NAMES]
                applied = "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)"
                conn.executemany(applied, rows)
            else:
                from sqlite_utils import Database

                from .ledger_schema import MIGRATIONS

                MIGRATIONS.apply(Database(conn, execute_plugins=False))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open_readonly(cls, path: Path) -> "Ledger | None":
        """The ledger for `status` and friends: None if there is none yet (nothing is created)."""
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:  # NotADirectoryError: the state "directory" is a file
            raise StateError(f"{path}: cannot open the ledger: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise StateError(f"{path}: cannot open the ledger: not a regular file")
        return cls(path, _readonly=True)

    # --- units -----------------------------------------------------------------

    def units(self) -> dict[str, UnitRecord]:
        return {row["name"]: record_from_row(row, self._specs) for row in self._select("units")}

    def unit_rows(self) -> list[dict[str, Any]]:
        """The `units` rows as stored (spec and handle as JSON text): cheap reads for `status`."""
        return self._select("units")

    def save(self, records: Iterable[UnitRecord]) -> None:
        """Upsert the records in one transaction (one commit for the whole pass)."""
        rows = [record_to_row(record, self._specs) for record in records]
        if not rows:
            return
        with self._transaction() as conn:
            _upsert(conn, "units", rows, "name")

    def forget(self, names: Iterable[str]) -> None:
        """Drop units and their pending restart requests (a unit re-added later starts clean)."""
        keys = [(name,) for name in names]
        if not keys:
            return
        with self._transaction() as conn:
            conn.executemany("DELETE FROM units WHERE name = ?", keys)
            conn.executemany("DELETE FROM restart_requests WHERE name = ?", keys)
            for (name,) in keys:
                self._specs.forget(name)

    # --- spec files ---------------------------------------------------------------

    def spec_files(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """path -> (stat key, content hash) of the spec last parsed from that file."""
        return {
            row["path"]: (tuple(orjson.loads(row["stat_key"])), row["content_hash"])
            for row in self._select("spec_files")
        }

    def save_spec_files(self, changed: dict[str, tuple[tuple[int, ...], str]], removed: Iterable[str]) -> None:
        rows = [
            {"path": path, "stat_key": orjson.dumps(list(key)).decode(), "content_hash": content_hash}
            for path, (key, content_hash) in changed.items()
        ]
        gone = [(path,) for path in removed]
        if not rows and not gone:
            return
        with self._transaction() as conn:
            _upsert(conn, "spec_files", rows, "path")
            conn.executemany("DELETE FROM spec_files WHERE path = ?", gone)

    # --- restart requests ------------------------------------------------------

    def request_restart(self, name: str, token: str, at: float) -> None:
        """Record a restart request; the planner carries it out once (token != record.restart_token)."""
        with self._transaction() as conn:
            _upsert(conn, "restart_requests", [{"name": name, "token": token, "requested_at": at}], "name")

    def restart_requests(self) -> dict[str, str]:
        return {row["name"]: row["token"] for row in self._select("restart_requests")}

    # --- the reconciler itself -------------------------------------------------

    def record_pass(
        self,
        started_at: float,
        finished_at: float,
        actions: int,
        errors: int,
        *,
        problems: Iterable[SpecProblem] | None = None,
    ) -> None:
        """Record the latest pass and, if given, replace the stored invalid specs with `problems`
        (in the same transaction, so `status` never shows one pass's summary with another's problems)."""
        row = {"id": 1, "started_at": started_at, "finished_at": finished_at, "actions": actions, "errors": errors}
        with self._transaction() as conn:
            _upsert(conn, "last_pass", [row], "id")
            if problems is not None:
                conn.execute("DELETE FROM spec_problems")
                rows = [(p.path, p.error) for p in problems]
                conn.executemany("INSERT OR REPLACE INTO spec_problems (path, error) VALUES (?, ?)", rows)

    def problems(self) -> list[SpecProblem]:
        """The invalid spec files as of the latest pass that reported them, sorted by path."""
        rows = self._select("spec_problems")
        return sorted((SpecProblem(path=row["path"], error=row["error"]) for row in rows), key=lambda p: p.path)

    def last_pass(self) -> dict[str, Any] | None:
        """{started_at, finished_at (epoch seconds), actions, errors} of the latest pass, or None."""
        rows = self._select("last_pass")
        if not rows:
            return None
        row = rows[0]
        del row["id"]
        return row

    def set_reconciler(
        self,
        pid: int,
        version: str,
        specs_dir: str | Path,
        state_dir: str | Path,
        started_at: float,
        running: bool,
    ) -> None:
        row = {
            "id": 1,
            "pid": pid,
            "version": version,
            "specs_dir": str(specs_dir),
            "state_dir": str(state_dir),
            "started_at": started_at,
            "running": int(running),
        }
        with self._transaction() as conn:
            _upsert(conn, "reconciler", [row], "id")

    def reconciler(self) -> dict[str, Any] | None:
        """The daemon as it last described itself; `running` is as of that write, not checked."""
        rows = self._select("reconciler")
        if not rows:
            return None
        row = rows[0]
        del row["id"]
        row["running"] = bool(row["running"])
        return row

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front.

        BEGIN IMMEDIATE makes a busy peer wait out the busy timeout at the
        start; a deferred BEGIN that reads first could fail mid-way instead.
        """
        if self.readonly:
            raise sqlite3.OperationalError("the ledger was opened read-only")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

    def _select(self, table: str) -> list[dict[str, Any]]:
        """All rows of a table; none if the table does not exist yet (a read-only
        ledger opened before the daemon created the schema)."""
        with self._lock:
            exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            if self._conn.execute(exists, (table,)).fetchone() is None:
                return []
            cursor = self._conn.execute(f"SELECT * FROM [{table}]")
            columns = [d[0] for d in cursor.description]
            return [dict(zip(columns, row)) for row in cursor]


def _upsert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]], key: str) -> None:
    """Insert each row, or update the given columns of the row with the same key (sqlite-utils' upsert)."""
    if not rows:
        return
    columns = list(rows[0])
    names = ", ".join(f"[{c}]" for c in columns)
    marks = ", ".join("?" * len(columns))
    updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in columns if c != key)
    sql = f"INSERT INTO [{table}] ({names}) VALUES ({marks}) ON CONFLICT([{key}]) DO UPDATE SET {updates}"
    conn.executemany(sql, [tuple(row[c] for c in columns) for row in rows])
