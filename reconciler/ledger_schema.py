"""The ledger's schema, as named sqlite-utils migrations (applied by writers, when one is pending).

The steps are plain functions listed in `STEPS`, so that a writer can see that
none is pending without importing sqlite-utils; `MIGRATIONS`, the sqlite-utils
migration set that applies them, is built on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

MIGRATION_SET = "reconciler.ledger"


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


def _spec_problems(db: Database) -> None:
    # The invalid spec files of the latest pass, for `status` (`invalid_specs`).
    db["spec_problems"].create({"path": str, "error": str}, pk="path")


def _spec_files(db: Database) -> None:
    # The stat key of each spec file with the content hash of the spec parsed from it,
    # so a new process (`--once`, a restarted daemon) need not parse unchanged files.
    db["spec_files"].create({"path": str, "stat_key": str, "content_hash": str}, pk="path")


# In the order they apply. A released step is frozen in time: add steps, never edit one.
STEPS: tuple[tuple[str, Callable[[Database], None]], ...] = (
    ("0001_initial", _initial_schema),
    ("0002_spec_problems", _spec_problems),
    ("0003_spec_files", _spec_files),
)


def migrations() -> Migrations:
    """The steps as a sqlite-utils migration set (this imports sqlite-utils)."""
    from sqlite_utils.migrations import Migrations

    migration_set = Migrations(MIGRATION_SET)
    for name, step in STEPS:
        migration_set(name=name)(step)
    return migration_set


def __getattr__(name: str) -> Migrations:
    """`MIGRATIONS`, built when first asked for."""
    if name != "MIGRATIONS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = globals()["MIGRATIONS"] = migrations()
    return built
