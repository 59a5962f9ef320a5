"""Deciding what to do: a pure function of desired state, memory and `now`.

`plan()` reads no clock, touches no file and no process. Given the same input
it returns the same Plan, and once its actions have been carried out it
returns no actions (it is its own fixed point). Each unit gets at most one
action per pass; stops come before starts.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import attrs

from .backoff import gave_up, restart_delay, wants_restart
from .model import Desired, Health, OnUnhealthy, Spec, UnitRecord, UnitState

START, STOP, RESTART, IN_PLACE = "start", "stop", "restart", "in-place"
_ORDER = {STOP: 0, RESTART: 1, IN_PLACE: 2, START: 3}


@attrs.frozen
class Action:
    """One idempotent change to one unit.

    `spec` is what to run (start, restart, in-place) or whose stop settings
    apply (stop). `handle` is the process to stop (stop, restart). `forget`
    drops the unit once stopped (its spec was removed).
    """

    kind: str
    unit: str
    reason: str
    spec: Spec | None = None
    forget: bool = False
    is_restart: bool = False  # counts in the unit's `restarts`

    def describe(self) -> str:
        return f"{self.kind} {self.unit}: {self.reason}"


@attrs.frozen
class Plan:
    actions: tuple[Action, ...]
    records: Mapping[str, UnitRecord]  # memory after deciding, before any effect
    forgotten: tuple[str, ...] = ()  # units dropped without an action
    wake_at: float | None = None  # earliest backoff deadline


def effective_desired(desired: Desired, records: Mapping[str, UnitRecord]) -> Desired:
    """Keep the last good spec of every unit whose file is now invalid.

    A typo in a spec file must never stop the unit it describes.
    """
    broken = {p.path for p in desired.problems}
    kept = {
        name: rec.spec
        for name, rec in records.items()
        if rec.spec is not None and rec.spec.path in broken and name not in desired.specs
    }
    if not kept:
        return desired
    return attrs.evolve(desired, specs={**desired.specs, **kept})


def plan(
    desired: Desired,
    records: Mapping[str, UnitRecord],
    now: float,
    busy: Iterable[str] = (),
) -> Plan:
    """The actions that move `records` towards `desired`.

    `busy` names units with an action still in flight: they are left alone.
    """
    busy = frozenset(busy)
    actions: list[Action] = []
    out: dict[str, UnitRecord] = {}
    forgotten: list[str] = []
    for name in sorted(set(desired.specs) | set(records)):
        rec = records.get(name)
        if name in busy and rec is not None:
            out[name] = rec
            continue
        spec = desired.specs.get(name)
        if spec is None:
            new, action = _absent(rec, desired.complete)
        else:
            new, action = _present(spec, rec or UnitRecord(name=name), desired, records, now)
        if new is None:
            forgotten.append(name)
        else:
            out[name] = new
        if action is not None:
            actions.append(action)
    actions.sort(key=lambda a: (_ORDER[a.kind], a.unit))
    deadlines = [r.next_retry_at for r in out.values() if r.state is UnitState.BACKOFF and r.next_retry_at]
    return Plan(tuple(actions), out, tuple(forgotten), min(deadlines, default=None))


def _absent(rec: UnitRecord, complete: bool) -> tuple[UnitRecord | None, Action | None]:
    """The unit's spec is gone: stop it and forget it, unless the read was incomplete."""
    if not complete:
        return _with(rec, message="specs directory not fully readable; unit kept as is"), None
    if rec.handle is None:
        return None, None
    return (
        _with(rec, desired="stopped", state=UnitState.STOPPING),
        Action(STOP, rec.name, "spec removed", spec=rec.spec, forget=True),
    )


def _present(
    spec: Spec, rec: UnitRecord, desired: Desired, records: Mapping[str, UnitRecord], now: float
) -> tuple[UnitRecord, Action | None]:
    token = desired.restart_requests.get(spec.name)
    requested = token is not None and token != rec.restart_token
    if not spec.enabled:
        return _disabled(spec, rec, token)
    if rec.handle is not None:
        return _running(spec, rec, token, requested)
    return _not_running(spec, rec, token, requested, desired, records, now)


def _disabled(spec: Spec, rec: UnitRecord, token: str | None) -> tuple[UnitRecord, Action | None]:
    # A restart request for a disabled unit has nothing to restart: it is acknowledged.
    rec = _with(rec, spec=spec, desired="stopped", restart_token=token or rec.restart_token)
    if rec.handle is not None:
        return _with(rec, state=UnitState.STOPPING), Action(STOP, spec.name, "disabled", spec=spec)
    return _with(rec, state=UnitState.STOPPED, next_retry_at=None, message=""), None


def _running(spec: Spec, rec: UnitRecord, token: str | None, requested: bool) -> tuple[UnitRecord, Action | None]:
    if rec.state is UnitState.UNKNOWN:
        return rec, None  # the driver cannot tell; acting blind could start a twin
    reason = None
    if requested:
        reason = "restart requested"
    elif rec.handle is not None and rec.handle.spec_hash != spec.process_hash:
        reason = "spec changed"
    elif rec.health is Health.UNHEALTHY and spec.health and spec.health.on_unhealthy is OnUnhealthy.RESTART:
        reason = "unhealthy"
    if reason is not None:
        new = _with(rec, spec=spec, desired="running", state=UnitState.STOPPING, restart_token=token)
        return new, Action(RESTART, spec.name, reason, spec=spec, is_restart=True)
    if rec.spec is None or not _same_content(rec.spec, spec):
        new = _with(rec, spec=spec, desired="running", state=UnitState.RUNNING)
        return new, Action(IN_PLACE, spec.name, "settings changed", spec=spec)
    if rec.state is UnitState.RUNNING and rec.desired == "running":
        return rec, None  # as it should be, like most units on most passes: spared even _with's checks
    return _with(rec, desired="running", state=UnitState.RUNNING), None


def _not_running(
    spec: Spec,
    rec: UnitRecord,
    token: str | None,
    requested: bool,
    desired: Desired,
    records: Mapping[str, UnitRecord],
    now: float,
) -> tuple[UnitRecord, Action | None]:
    fresh_reason = _fresh_start_reason(spec, rec, requested)
    rec = _with(rec, desired="running")
    if fresh_reason is None:
        if rec.state is UnitState.FAILED:
            return rec, None
        if not wants_restart(spec.restart.policy, rec.exit_code, rec.exit_signal):
            return _with(rec, state=UnitState.EXITED, next_retry_at=None), None
        if gave_up(rec.failures, spec.restart):
            why = f"gave up after {rec.failures} consecutive failures (max_retries = {spec.restart.max_retries})"
            return _with(rec, state=UnitState.FAILED, next_retry_at=None, message=why), None
        deadline = (rec.exited_at if rec.exited_at is not None else now) + restart_delay(rec.failures, spec.restart)
        if now < deadline:
            return _with(rec, state=UnitState.BACKOFF, next_retry_at=deadline), None
        reason, is_restart = "restart policy", True
    else:
        reason, is_restart = fresh_reason, rec.started_at is not None
        rec = _with(rec, failures=0, restart_token=token or rec.restart_token)
    waiting = _unmet_dependencies(spec, desired, records)
    if waiting:
        return _with(rec, spec=spec, state=UnitState.STARTING, message="waiting for " + waiting), None
    new = _with(rec, spec=spec, state=UnitState.STARTING, next_retry_at=None, message="")
    return new, Action(START, spec.name, reason, spec=spec, is_restart=is_restart)


def _fresh_start_reason(spec: Spec, rec: UnitRecord, requested: bool) -> str | None:
    """Why this unit starts over with a clean failure count, or None if it does not.

    A changed spec, an explicit request, or a unit we stopped ourselves is a new
    desired state; past failures do not count against it.
    """
    if requested:
        return "restart requested"
    if rec.spec is None:
        return "added"
    if not _same_content(rec.spec, spec):
        return "spec changed"
    if rec.state is UnitState.STOPPED:
        return "enabled"
    if rec.exited_at is None:
        return "not running"  # never ran, or a start was interrupted
    return None


def _unmet_dependencies(spec: Spec, desired: Desired, records: Mapping[str, UnitRecord]) -> str:
    """The dependencies not yet running (or not yet healthy, if they have a check).

    One that no spec names is waited for too (its file may come), but said so, when the
    whole specs directory was read (a key-only pass reads only its own files).
    """
    missing = []
    for dep in spec.depends_on:
        rec = records.get(dep)
        if rec is None and desired.complete and dep not in desired.specs:
            missing.append(f"{dep} (no such unit)")
        elif rec is None or rec.state is not UnitState.RUNNING:
            missing.append(f"{dep} (not running)")
        elif rec.spec is not None and rec.spec.health is not None and rec.health is not Health.HEALTHY:
            missing.append(f"{dep} (not healthy)")
    return ", ".join(missing)


def _same_content(a: Spec, b: Spec) -> bool:
    # Unchanged files yield the very same Spec object: no hashing needed.
    return a is b or a.content_hash == b.content_hash


def _with(rec: UnitRecord, **changes: object) -> UnitRecord:
    """`attrs.evolve` that keeps the very same record when nothing changes.

    Most units, on most passes, are already where they should be; copying
    10,000 records per pass would dominate the planner's cost.
    """
    for name, value in changes.items():
        if getattr(rec, name) != value:
            return attrs.evolve(rec, **changes)
    return rec
