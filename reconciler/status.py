"""Read-only views for scripts: `status`, `plan`, and recording a restart request.

`status` tells the truth even when no reconciler runs: every recorded process
is observed again (read-only) before it is reported, so a dead process is
never shown as running. Scripts call it often, so it starts no event loop and
loads no driver while /proc shows every recorded process alive as recorded.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Iterable

import attrs
import orjson

from . import __version__
from .driver import CLOCK_TICKS, DriverSet, process_start_time
from .errors import UsageError
from .eventlog import EventLog
from .ledger import Ledger
from .memory import absorb_observations
from .model import Handle, Observation, ProcessState, SpecProblem, UnitRecord, iso_utc, process_hash_of
from .plan import Action, effective_desired, plan
from .settings import Settings
from .specs import SpecReader
from .statedir import ensure_state_dir, holder_pid

SCHEMA = 1


def _observe(settings: Settings, handles: list[Handle]) -> dict[str, Observation]:
    """Each handle's process as its driver reports it now (an event loop for the drivers' async API)."""
    if not handles:
        return {}
    import anyio  # with asyncio, a fifth of a status's start-up: only when a driver must answer

    observed: dict[str, Observation] = {}

    async def observe() -> None:
        # Handed back through `observed`, not returned: Python 3.11's asyncio runner
        # formats the main task's result (its repr) three times on the way out.
        drivers = DriverSet(settings.state_dir, settings.driver)
        try:
            observed.update(await drivers.observe(handles))
        finally:
            await drivers.aclose()

    anyio.run(observe)
    return observed


def observe_recorded(settings: Settings, handles: Iterable[dict[str, Any]]) -> dict[str, Observation]:
    """What the OS says now about each recorded handle (`Handle.to_json` form), keyed by unit.

    A process that /proc shows alive with the handle's pid and start time is
    running: the check a driver makes, and it needs no driver (a start time in
    wall-clock terms also tells a process of an earlier boot apart). Any other
    answer (gone, a zombie, another start time, no /proc) is the driver's to
    give, with the exit facts only it can find.
    """
    observed: dict[str, Observation] = {}
    doubtful: list[Handle] = []
    for data in handles:
        started_at = _running_since(data["pid"], data["started_at"])
        if started_at is not None:
            observed[data["unit"]] = Observation(ProcessState.RUNNING, pid=data["pid"], started_at=started_at)
        else:
            doubtful.append(Handle.from_json(data))
    observed.update(_observe(settings, doubtful))
    return observed


def _running_since(pid: int | None, started_at: float | None) -> float | None:
    """`started_at` if process `pid` runs (not a zombie) and started then, to the clock tick; else None."""
    if pid is None or started_at is None:
        return None
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # a file object costs twice as much
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: fields 3... follow the last ")".
    fields = raw[raw.rfind(b")") + 2 :].split(None, 20)
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    since = process_start_time(int(fields[19]))  # field 22: start time in ticks after boot
    return started_at if abs(since - started_at) < 0.5 / CLOCK_TICKS else None


def collect_status(settings: Settings) -> dict[str, Any]:
    """The contract's status document (schema 1).

    Built from the ledger's rows as stored: scripts call this often, and
    turning 1000 rows into full records would cost more than the rest.
    """
    ledger = Ledger.open_readonly(settings.ledger_path)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] | None = None
    last_pass = None
    problems: list[SpecProblem] = []
    if ledger is not None:
        with ledger:
            rows, info, last_pass, problems = ledger.unit_rows(), ledger.reconciler(), ledger.last_pass(), ledger.problems()
    for row in rows:
        row["handle"] = None if row["handle"] is None else orjson.loads(row["handle"])
        row["spec"] = None if row["spec"] is None else orjson.loads(row["spec"])
    observed = observe_recorded(settings, [row["handle"] for row in rows if row["handle"] is not None])
    holder = holder_pid(settings.lock_path)
    daemon_pid = holder or (info or {}).get("pid")
    return {
        "schema": SCHEMA,
        "reconciler": {
            "running": holder is not None and bool((info or {}).get("running")),
            "pid": daemon_pid,
            "version": (info or {}).get("version", __version__),
            "specs_dir": (info or {}).get("specs_dir", str(settings.specs_dir)),
            "state_dir": str(settings.state_dir),
            "last_pass": None
            if last_pass is None
            else {
                "started_at": iso_utc(last_pass["started_at"]),
                "finished_at": iso_utc(last_pass["finished_at"]),
                "actions": last_pass["actions"],
                "errors": last_pass["errors"],
            },
        },
        "units": [_unit_view(row, observed.get(row["name"])) for row in sorted(rows, key=lambda r: r["name"])],
        "invalid_specs": [{"path": p.path, "error": p.error} for p in problems],
    }


def _unit_view(row: dict[str, Any], obs: Observation | None) -> dict[str, Any]:
    """One unit as the contract shows it, from its ledger row and what the OS says now."""
    state, pid, message = row["state"], row["pid"], row["message"]
    exit_code, exit_signal, started_at = row["exit_code"], row["exit_signal"], row["started_at"]
    handle: dict[str, Any] | None = row["handle"]
    if handle is not None and obs is not None:
        if obs.state is ProcessState.RUNNING:
            pid = obs.pid
        elif obs.state is ProcessState.UNKNOWN:
            state, message = "unknown", obs.message
        else:
            # Gone since the reconciler last looked: report what the OS says, never "running".
            state, pid, message = "exited", None, obs.message or "exited since the last pass"
            exit_code, exit_signal = obs.exit_code, obs.exit_signal
    spec = row["spec"]
    return {
        "name": row["name"],
        "driver": handle["driver"] if handle is not None else (spec["driver"] if spec else None),
        "spec_path": spec["path"] if spec else None,
        "spec_hash": process_hash_of(spec) if spec else None,
        "desired": row["desired"],
        "state": state,
        "pid": pid,
        "started_at": iso_utc(started_at) if pid is not None else None,
        "restarts": row["restarts"],
        "exit_code": exit_code,
        "exit_signal": exit_signal,
        "health": row["health"],
        "next_retry_at": iso_utc(row["next_retry_at"]) if state == "backoff" else None,
        "message": message,
    }


def render_status(report: dict[str, Any]) -> str:
    """A table a person can read."""
    rec = report["reconciler"]
    last = rec["last_pass"]
    head = f"reconciler {'running (pid %s)' % rec['pid'] if rec['running'] else 'not running'}"
    if last:
        head += f"; last pass {last['finished_at']}: {last['actions']} actions, {last['errors']} errors"
    rows = [("NAME", "STATE", "PID", "RESTARTS", "HEALTH", "EXIT", "MESSAGE")]
    for u in report["units"]:
        exit_text = "" if u["exit_code"] is None and u["exit_signal"] is None else (
            f"code {u['exit_code']}" if u["exit_signal"] is None else f"signal {u['exit_signal']}"
        )
        rows.append(
            (u["name"], u["state"], str(u["pid"] or "-"), str(u["restarts"]), u["health"], exit_text, u["message"])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [head, ""] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    for problem in report["invalid_specs"]:
        lines.append(f"invalid: {problem['path']}: {problem['error']}")
    return "\n".join(line.rstrip() for line in lines)


def preview_plan(settings: Settings) -> tuple[tuple[Action, ...], tuple[SpecProblem, ...]]:
    """What a pass would do now, from the same inputs a pass uses; changes nothing."""
    ledger = Ledger.open_readonly(settings.ledger_path)
    records: dict[str, UnitRecord] = {}
    requests: dict[str, str] = {}
    if ledger is not None:
        with ledger:
            records, requests = ledger.units(), ledger.restart_requests()
    reader = SpecReader(settings.specs_dir, allow_insecure=settings.allow_insecure_specs, trusted_uids=settings.trusted_uids())
    desired = effective_desired(attrs.evolve(reader.read(), restart_requests=requests), records)
    now = time.time()
    handles = [r.handle for r in records.values() if r.handle is not None]
    records, _ = absorb_observations(records, _observe(settings, handles), now)
    return plan(desired, records, now).actions, desired.problems


def request_restart(settings: Settings, name: str, token: str, at: float) -> int | None:
    """Record the request as desired state, log it, and wake the daemon if one runs (its pid)."""
    ledger_known = Ledger.open_readonly(settings.ledger_path)
    known = set()
    if ledger_known is not None:
        with ledger_known:
            known = set(ledger_known.units())
    if name not in known:
        reader = SpecReader(settings.specs_dir, allow_insecure=True, trusted_uids=None)
        if name not in reader.read().specs:
            raise UsageError(f"no unit named {name!r} (not in the ledger nor in {settings.specs_dir})")
    ensure_state_dir(settings.state_dir)
    with Ledger(settings.ledger_path) as ledger:
        ledger.request_restart(name, token, at)
    with EventLog(settings.events_path) as events:
        events.append("unit.restart_requested", name, ts=at)
    holder = holder_pid(settings.lock_path)
    if holder:
        try:
            os.kill(holder, signal.SIGHUP)
        except ProcessLookupError:
            holder = None
    return holder
