"""Folding facts into memory: what the driver saw and what actions did.

Pure functions from (records, facts, now) to (records, events). Events are
plain dicts in the contract's vocabulary; the event log adds nothing but
writing them.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from .backoff import failures_after_exit
from .model import (
    Desired,
    Handle,
    Health,
    Observation,
    ProcessState,
    Spec,
    UnitRecord,
    UnitState,
)
from .plan import RESTART, STOP, Action

Event = dict[str, Any]


def _event(name: str, ts: float, unit: str | None = None, **fields: Any) -> Event:
    event: Event = {"ts": ts, "event": name}
    if unit is not None:
        event["unit"] = unit
    event.update(fields)
    return event


@attrs.frozen
class Outcome:
    """What carrying out one action did. `stopped` is how the old process ended."""

    action: Action
    at: float
    handle: Handle | None = None
    stopped: Observation | None = None
    error: str | None = None
    permanent: bool = False


def absorb_observations(
    records: Mapping[str, UnitRecord], observed: Mapping[str, Observation], now: float
) -> tuple[dict[str, UnitRecord], list[Event]]:
    """Update memory from the driver's report; a process that is gone is an exit."""
    out = dict(records)
    events: list[Event] = []
    for name, obs in observed.items():
        rec = out.get(name)
        if rec is None or rec.handle is None:
            continue
        if obs.state is ProcessState.RUNNING:
            if rec.state in (UnitState.UNKNOWN, UnitState.STARTING) or rec.pid != obs.pid:
                out[name] = attrs.evolve(rec, state=UnitState.RUNNING, pid=obs.pid, message="")
        elif obs.state is ProcessState.UNKNOWN:
            out[name] = attrs.evolve(rec, state=UnitState.UNKNOWN, message=obs.message)
        else:
            out[name] = _exited(rec, obs, now)
            events.append(
                _event("unit.exited", now, name, exit_code=obs.exit_code, exit_signal=obs.exit_signal, pid=rec.pid)
            )
    return out, events


def _exited(rec: UnitRecord, obs: Observation, now: float) -> UnitRecord:
    exited_at = obs.exited_at if obs.exited_at is not None else now
    ran_for = exited_at - rec.started_at if rec.started_at is not None else None
    settings = rec.spec.restart if rec.spec is not None else None
    failures = failures_after_exit(rec.failures, ran_for, settings) if settings else rec.failures + 1
    return attrs.evolve(
        rec,
        handle=None,
        pid=None,
        state=UnitState.EXITED,
        exit_code=obs.exit_code,
        exit_signal=obs.exit_signal,
        exited_at=exited_at,
        failures=failures,
        health=Health.NONE if rec.health is Health.NONE else Health.UNKNOWN,
        health_failures=0,
        message=obs.message,
    )


def absorb_outcome(
    records: Mapping[str, UnitRecord], outcome: Outcome
) -> tuple[dict[str, UnitRecord], list[Event]]:
    """Update memory with the result of one action."""
    action, at = outcome.action, outcome.at
    out = dict(records)
    rec = out.get(action.unit) or UnitRecord(name=action.unit, spec=action.spec)
    events: list[Event] = []
    if action.kind in (STOP, RESTART):
        if outcome.stopped is None:
            # The stop failed: the old process may still run; the next pass looks again.
            out[action.unit] = attrs.evolve(rec, state=UnitState.UNKNOWN, message=outcome.error or "")
            return out, events
        stopped = outcome.stopped
        events.append(
            _event("unit.stopped", at, action.unit, exit_code=stopped.exit_code, exit_signal=stopped.exit_signal)
        )
        rec = attrs.evolve(
            rec,
            handle=None,
            pid=None,
            state=UnitState.STOPPED,
            exit_code=stopped.exit_code,
            exit_signal=stopped.exit_signal,
            exited_at=stopped.exited_at if stopped.exited_at is not None else at,
            health=_initial_health(rec.spec),
            health_failures=0,
        )
        if action.kind == STOP:
            if action.forget:
                out.pop(action.unit, None)
            else:
                out[action.unit] = rec
            return out, events
    if outcome.handle is not None:
        handle = outcome.handle
        rec = attrs.evolve(
            rec,
            spec=action.spec,
            handle=handle,
            pid=handle.pid,
            started_at=handle.started_at,
            state=UnitState.RUNNING,
            restarts=rec.restarts + (1 if action.is_restart else 0),
            exit_code=None,
            exit_signal=None,
            exited_at=None,
            next_retry_at=None,
            health=_initial_health(action.spec),
            health_failures=0,
            health_checked_at=None,
            message="",
        )
        events.append(_event("unit.started", at, action.unit, pid=handle.pid, reason=action.reason))
    elif outcome.error is not None:
        rec = attrs.evolve(
            rec,
            handle=None,
            pid=None,
            state=UnitState.FAILED if outcome.permanent else UnitState.EXITED,
            failures=rec.failures + 1,
            exit_code=None,
            exit_signal=None,
            exited_at=at,
            message=outcome.error,
        )
    out[action.unit] = rec
    return out, events


def _initial_health(spec: Spec | None) -> Health:
    return Health.UNKNOWN if spec is not None and spec.health is not None else Health.NONE


def transition_events(
    before: Mapping[str, UnitRecord], after: Mapping[str, UnitRecord], now: float
) -> list[Event]:
    """Events for state changes the planner made: backoff, failure, health."""
    events: list[Event] = []
    for name, rec in after.items():
        old = before.get(name)
        if rec.state is UnitState.BACKOFF and (old is None or old.next_retry_at != rec.next_retry_at):
            since = rec.exited_at if rec.exited_at is not None else now
            delay_ms = max(0, round(((rec.next_retry_at or now) - since) * 1000))
            events.append(_event("unit.backoff", now, name, delay_ms=delay_ms, failures=rec.failures))
        if rec.state is UnitState.FAILED and (old is None or old.state is not UnitState.FAILED):
            events.append(_event("unit.failed", now, name, reason=rec.message))
        if old is not None and rec.health is not old.health and rec.health is not Health.NONE:
            events.append(_event("unit.health", now, name, health=rec.health.value))
    return events


# Unit name -> the spec last read for it. Specs, not their hashes: a file read again unchanged
# yields the same Spec, and hashing 500 specs cost a cold start 7 ms before its first start.
SpecIndex = Mapping[str, Spec]


def spec_index(desired: Desired) -> dict[str, Spec]:
    return dict(desired.specs)


def index_of_records(records: Mapping[str, UnitRecord]) -> dict[str, Spec]:
    return {n: r.spec for n, r in records.items() if r.spec is not None}


def spec_events(
    before: SpecIndex,
    problems_before: Mapping[str, str],
    desired: Desired,
    now: float,
) -> list[Event]:
    """spec.added / changed / removed / invalid, from one read of the directory to the next."""
    events: list[Event] = []
    broken = {p.path for p in desired.problems}
    for name, spec in desired.specs.items():
        old = before.get(name)
        if old is None:
            events.append(_event("spec.added", now, name, path=spec.path))
        elif old is not spec and old.content_hash != spec.content_hash and spec.path not in broken:
            events.append(_event("spec.changed", now, name, path=spec.path))
    if desired.complete:
        for name, old in before.items():
            if name not in desired.specs:
                events.append(_event("spec.removed", now, name, path=old.path))
    for problem in desired.problems:
        if problems_before.get(problem.path) != problem.error:
            events.append(_event("spec.invalid", now, path=problem.path, error=problem.error))
    return events
