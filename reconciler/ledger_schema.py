"""The ledger's schema, as named sqlite-utils migrations.

Kept apart from `ledger.py`, which imports this only when an existing file's
`user_version` is below ledger.SCHEMA_VERSION: reads, row writes and new files
need nothing but a plain sqlite3 connection. A new migration is added here, to
ledger.MIGRATION_NAMES, and to ledger.FRESH_SCHEMA as it leaves the schema.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .ledger import MIGRATION_SET

MIGRATIONS = Migrations(MIGRATION_SET)


@MIGRATIONS(name="0001_initial")
def _initial_schema(db: Database) -> None:
    # Spelled out rather than derived from UnitRecord: a migration is frozen in time.
    db["units"].create(
        {
            "name": str,
            "spec": str,  # JSON of model.spec_to_dict
            "handle": str,  # JSON of Handle.to_json
            "desired": str,
            "state": str,
            "pid": int,
            "started_at": float,
            "restarts": int,
            "failures": int,
            "exit_code": int,
            "exit_signal": int,
            "exited_at": float,
            "next_retry_at": float,
            "health": str,
            "health_failures": int,
            "health_checked_at": float,
            "message": str,
            "restart_token": str,
            "updated_at": float,
        },
        pk="name",
        not_null={"desired", "state", "restarts", "failures", "health", "health_failures", "message"},
    )
    db["restart_requests"].create({"name": str, "token": str, "requested_at": float}, pk="name")
    # Single-row tables (id = 1): the latest pass, and the daemon that wrote last.
    db["last_pass"].create(
        {"id": int, "started_at": float, "finished_at": float, "actions": int, "errors": int}, pk="id"
    )
    db["reconciler"].create(
        {
            "id": int,
            "pid": int,
            "version": str,
            "specs_dir": str,
            "state_dir": str,
            "started_at": float,
            "running": int,
        },
        pk="id",
    )


@MIGRATIONS(name="0002_spec_problems")
def _spec_problems(db: Database) -> None:
    # The invalid spec files of the latest pass, for `status` (`invalid_specs`).
    db["spec_problems"].create({"path": str, "error": str}, pk="path")


@MIGRATIONS(name="0003_spec_files")
def _spec_files(db: Database) -> None:
    # The stat key of each spec file with the content hash of the spec parsed from it,
    # so a new process (`--once`, a restarted daemon) need not parse unchanged files.
    db["spec_files"].create({"path": str, "stat_key": str, "content_hash": str}, pk="path")
