"""The planner: table-driven cases and properties, no processes."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.backoff import failures_after_exit, restart_delay, wants_restart
from reconciler.memory import Outcome, absorb_observations, absorb_outcome, spec_events, transition_events
from reconciler.model import (
    Desired,
    Handle,
    Health,
    HealthCheck,
    HealthType,
    Observation,
    ProcessState,
    RestartPolicy,
    RestartSettings,
    Spec,
    SpecProblem,
    UnitRecord,
    UnitState,
)
from reconciler.plan import IN_PLACE, RESTART, START, STOP, effective_desired, plan

NOW = 1_000_000.0


def spec(name="web", command=("sleep", "100"), **kw) -> Spec:
    return Spec(name=name, command=command, cwd="/", path=f"/specs/{name}.toml", **kw)


def running(s: Spec, pid=100, started_at=NOW - 100, **kw) -> UnitRecord:
    handle = Handle("posix", s.name, s.process_hash, pid, started_at)
    return UnitRecord(name=s.name, spec=s, handle=handle, pid=pid, started_at=started_at, state=UnitState.RUNNING, **kw)


def exited(s: Spec, *, code=1, sig=None, at=NOW - 1, failures=1, **kw) -> UnitRecord:
    return UnitRecord(
        name=s.name, spec=s, state=UnitState.EXITED, exit_code=code, exit_signal=sig,
        exited_at=at, failures=failures, started_at=at - 1, **kw,
    )


def desired(*specs: Spec, **kw) -> Desired:
    return Desired(specs={s.name: s for s in specs}, **kw)


def kinds(p) -> list[tuple[str, str]]:
    return [(a.kind, a.unit) for a in p.actions]


# --- table ---------------------------------------------------------------------------------

WEB = spec()
WEB_NEW_CMD = spec(command=("sleep", "200"))
WEB_NEW_POLICY = spec(restart=RestartSettings(policy=RestartPolicy.ON_FAILURE))
WEB_DISABLED = spec(enabled=False)


@pytest.mark.parametrize(
    "case, want, records, want_actions, want_state",
    [
        ("added", desired(WEB), {}, [(START, "web")], UnitState.STARTING),
        ("converged", desired(WEB), {"web": running(WEB)}, [], UnitState.RUNNING),
        ("command changed", desired(WEB_NEW_CMD), {"web": running(WEB)}, [(RESTART, "web")], UnitState.STOPPING),
        ("policy changed", desired(WEB_NEW_POLICY), {"web": running(WEB)}, [(IN_PLACE, "web")], UnitState.RUNNING),
        ("removed", desired(), {"web": running(WEB)}, [(STOP, "web")], UnitState.STOPPING),
        ("removed, incomplete read", desired(complete=False), {"web": running(WEB)}, [], UnitState.RUNNING),
        ("disabled", desired(WEB_DISABLED), {"web": running(WEB)}, [(STOP, "web")], UnitState.STOPPING),
        ("disabled, stopped", desired(WEB_DISABLED), {}, [], UnitState.STOPPED),
        ("exited, backoff elapsed", desired(WEB), {"web": exited(WEB, at=NOW - 1)}, [(START, "web")], UnitState.STARTING),
        ("exited, in backoff", desired(WEB), {"web": exited(WEB, at=NOW, failures=3)}, [], UnitState.BACKOFF),
        (
            "on-failure, clean exit",
            desired(WEB_NEW_POLICY),
            {"web": exited(WEB_NEW_POLICY, code=0)},
            [],
            UnitState.EXITED,
        ),
        (
            "on-failure, killed",
            desired(WEB_NEW_POLICY),
            {"web": exited(WEB_NEW_POLICY, code=None, sig=9)},
            [(START, "web")],
            UnitState.STARTING,
        ),
        (
            "never",
            desired(spec(restart=RestartSettings(policy=RestartPolicy.NEVER))),
            {"web": exited(spec(restart=RestartSettings(policy=RestartPolicy.NEVER)), code=1)},
            [],
            UnitState.EXITED,
        ),
        (
            "max retries reached",
            desired(spec(restart=RestartSettings(max_retries=3))),
            {"web": exited(spec(restart=RestartSettings(max_retries=3)), failures=3)},
            [],
            UnitState.FAILED,
        ),
        (
            "failed stays failed",
            desired(WEB),
            {"web": attrs.evolve(exited(WEB), state=UnitState.FAILED)},
            [],
            UnitState.FAILED,
        ),
        (
            "failed, spec changed",
            desired(WEB_NEW_CMD),
            {"web": attrs.evolve(exited(WEB), state=UnitState.FAILED)},
            [(START, "web")],
            UnitState.STARTING,
        ),
        (
            "restart requested while running",
            desired(WEB, restart_requests={"web": "t1"}),
            {"web": running(WEB)},
            [(RESTART, "web")],
            UnitState.STOPPING,
        ),
        (
            "restart request already carried out",
            desired(WEB, restart_requests={"web": "t1"}),
            {"web": running(WEB, restart_token="t1")},
            [],
            UnitState.RUNNING,
        ),
        (
            "restart requested while failed",
            desired(WEB, restart_requests={"web": "t2"}),
            {"web": attrs.evolve(exited(WEB), state=UnitState.FAILED, restart_token="t1")},
            [(START, "web")],
            UnitState.STARTING,
        ),
        (
            "unknown observation: hands off",
            desired(WEB_NEW_CMD),
            {"web": attrs.evolve(running(WEB), state=UnitState.UNKNOWN)},
            [],
            UnitState.UNKNOWN,
        ),
        (
            "unhealthy",
            desired(spec(health=HealthCheck(type=HealthType.TCP, port=80))),
            {"web": running(spec(health=HealthCheck(type=HealthType.TCP, port=80)), health=Health.UNHEALTHY)},
            [(RESTART, "web")],
            UnitState.STOPPING,
        ),
    ],
)
def test_plan_table(case, want, records, want_actions, want_state):
    p = plan(want, records, NOW)
    assert kinds(p) == want_actions, case
    assert p.records["web"].state is want_state, case


def test_removed_and_stopped_unit_is_forgotten():
    p = plan(desired(), {"web": exited(WEB)}, NOW)
    assert p.actions == () and p.forgotten == ("web",) and "web" not in p.records


def test_busy_units_are_left_alone():
    p = plan(desired(WEB_NEW_CMD), {"web": running(WEB)}, NOW, busy={"web"})
    assert p.actions == () and p.records["web"] == running(WEB)


def test_stops_come_before_starts():
    a, b = spec("a"), spec("b")
    p = plan(desired(b), {"a": running(a)}, NOW)
    assert kinds(p) == [(STOP, "a"), (START, "b")]


def test_backoff_deadline_and_wake_up():
    rec = exited(WEB, at=NOW, failures=3)  # third failure: 0.1 * 2**2
    p = plan(desired(WEB), {"web": rec}, NOW)
    assert p.records["web"].next_retry_at == pytest.approx(NOW + 0.4)
    assert p.wake_at == pytest.approx(NOW + 0.4)
    assert kinds(plan(desired(WEB), {"web": rec}, NOW + 0.4)) == [(START, "web")]


def test_dependencies_gate_starts():
    db = spec("db")
    app = spec("app", depends_on=("db",))
    p = plan(desired(db, app), {}, NOW)
    assert kinds(p) == [(START, "db")]
    assert p.records["app"].message == "waiting for db (not running)"
    p2 = plan(desired(db, app), {"db": running(db)}, NOW)
    assert kinds(p2) == [(START, "app")]
    p3 = plan(desired(app), {}, NOW)  # no spec names db (yet): app waits, and says why
    assert kinds(p3) == [] and p3.records["app"].message == "waiting for db (no such unit)"


def test_unhealthy_dependency_gates_start():
    db = spec("db", health=HealthCheck(type=HealthType.TCP, port=5432))
    app = spec("app", depends_on=("db",))
    p = plan(desired(db, app), {"db": running(db, health=Health.UNKNOWN)}, NOW)
    assert kinds(p) == [] and "db (not healthy)" in p.records["app"].message


def test_invalid_file_keeps_last_good_spec():
    broken = desired(problems=(SpecProblem(WEB.path, "restart.policy: must be one of ..."),))
    eff = effective_desired(broken, {"web": running(WEB)})
    assert eff.specs == {"web": WEB}
    assert plan(eff, {"web": running(WEB)}, NOW).actions == ()


def test_backoff_arithmetic():
    s = RestartSettings(backoff_initial=0.1, backoff_max=1.0, reset_after=10)
    assert [restart_delay(n, s) for n in (1, 2, 3, 4, 5, 100000)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert failures_after_exit(5, 10.0, s) == 1
    assert failures_after_exit(5, 9.9, s) == 6
    assert wants_restart(RestartPolicy.ON_FAILURE, None, None)  # unknown status is not success


# --- memory -----------------------------------------------------------------------------------


def test_exit_is_absorbed_with_facts_and_event():
    rec = running(WEB, started_at=NOW - 1)
    obs = Observation(ProcessState.EXITED, exited_at=NOW, exit_code=3)
    records, events = absorb_observations({"web": rec}, {"web": obs}, NOW)
    new = records["web"]
    assert (new.state, new.handle, new.exit_code, new.failures) == (UnitState.EXITED, None, 3, 1)
    assert [e["event"] for e in events] == ["unit.exited"] and events[0]["exit_code"] == 3


def test_start_outcome_records_the_handle():
    action = plan(desired(WEB), {}, NOW).actions[0]
    handle = Handle("posix", "web", WEB.process_hash, 42, NOW)
    records, events = absorb_outcome({}, Outcome(action, NOW, handle=handle))
    assert records["web"].pid == 42 and records["web"].state is UnitState.RUNNING
    assert events[0]["event"] == "unit.started" and events[0]["pid"] == 42


def test_permanent_start_failure_fails_the_unit():
    action = plan(desired(WEB), {}, NOW).actions[0]
    records, _ = absorb_outcome({}, Outcome(action, NOW, error="command not found: x", permanent=True))
    assert records["web"].state is UnitState.FAILED
    assert plan(desired(WEB), records, NOW + 100).actions == ()


def test_transition_events():
    before = {"web": exited(WEB)}
    after = {"web": attrs.evolve(exited(WEB), state=UnitState.BACKOFF, next_retry_at=NOW + 0.5)}
    (event,) = transition_events(before, after, NOW)
    # The delay is the policy's, counted from the exit (NOW - 1), not what is left of it.
    assert event["event"] == "unit.backoff" and event["delay_ms"] == 1500


def test_spec_events():
    d = desired(WEB, problems=(SpecProblem("/specs/bad.toml", "command: required"),))
    events = spec_events({"old": spec("old")}, {}, d, NOW)
    assert sorted(e["event"] for e in events) == ["spec.added", "spec.invalid", "spec.removed"]
    assert spec_events({"web": spec()}, {"/specs/bad.toml": "command: required"}, d, NOW) == []  # equal, not the same
    (changed,) = spec_events({"web": WEB_NEW_CMD}, {"/specs/bad.toml": "command: required"}, d, NOW)
    assert changed["event"] == "spec.changed" and changed["unit"] == "web"


# --- properties -----------------------------------------------------------------------------


names = st.sampled_from(["a", "b", "c", "d"])
specs_strategy = st.builds(
    lambda name, cmd, enabled, policy, deps: spec(
        name, command=("sleep", str(cmd)), enabled=enabled,
        restart=RestartSettings(policy=policy, backoff_initial=0.0),
        depends_on=tuple(d for d in deps if d < name),  # acyclic
    ),
    names, st.integers(1, 3), st.booleans(), st.sampled_from(list(RestartPolicy)), st.lists(names, max_size=2, unique=True),
)


def _satisfiable(ss: list[Spec]) -> Desired:
    """Keep only dependencies on enabled units that exist (others wait forever, by design)."""
    enabled = {s.name for s in ss if s.enabled}
    return desired(*(attrs.evolve(s, depends_on=tuple(d for d in s.depends_on if d in enabled)) for s in ss))


desired_strategy = st.lists(specs_strategy, max_size=4, unique_by=lambda s: s.name).map(_satisfiable)


class FakeWorld:
    """A driver stand-in for properties: actions succeed at once, processes never die."""

    def __init__(self) -> None:
        self.pids = iter(range(1000, 10**6))

    def carry_out(self, records, p, now):
        for action in p.actions:
            handle = None
            if action.kind in (START, RESTART):
                handle = Handle("fake", action.unit, action.spec.process_hash, next(self.pids), now)
            stopped = Observation(ProcessState.EXITED, exited_at=now, exit_signal=15) if action.kind in (STOP, RESTART) else None
            records, _ = absorb_outcome(records, Outcome(action, now, handle=handle, stopped=stopped))
        return records


@settings(max_examples=150, deadline=None)
@given(start=desired_strategy, goal=desired_strategy)
def test_converges_and_is_its_own_fixed_point(start, goal):
    world = FakeWorld()
    records: dict = {}
    for want in (start, goal):
        for _ in range(6):  # dependency chains need a pass per level
            p = plan(want, records, NOW)
            assert len({a.unit for a in p.actions}) == len(p.actions), "one action per unit per pass"
            order = [a.kind for a in p.actions]
            assert order == sorted(order, key=lambda k: {STOP: 0, RESTART: 1, IN_PLACE: 2, START: 3}[k])
            records = world.carry_out(dict(p.records), p, NOW)
            for name in p.forgotten:
                records.pop(name, None)
        final = plan(want, records, NOW)
        assert final.actions == (), "a converged world needs nothing"
        assert plan(want, records, NOW) == final, "deterministic"
        for name, s in want.specs.items():
            state = final.records[name].state
            assert state is (UnitState.RUNNING if s.enabled else UnitState.STOPPED)
        assert set(final.records) == set(want.specs)
