"""CLI details: exit codes, one-line errors, JSON shapes, health checks and dependencies."""

from __future__ import annotations

import os
import re
import signal

import orjson
import pytest

from tests.conftest import cmdline, pids_tagged, proc_alive, wait_until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_status_json_shape_and_unknown_name(rc):
    empty = rc.status()
    assert empty["schema"] == 1 and empty["units"] == [] and empty["invalid_specs"] == []
    rc.spec("b.toml", 'command = ["sleep", "9101"]\n')
    rc.spec("a.toml", 'command = ["sleep", "9102"]\n')
    rc.cli("--once", check=0)
    report = rc.status()
    assert [u["name"] for u in report["units"]] == ["a", "b"]
    unit = report["units"][0]
    assert set(unit) == {
        "name", "driver", "spec_path", "spec_hash", "desired", "state", "pid", "started_at",
        "restarts", "exit_code", "exit_signal", "health", "next_retry_at", "message",
    }
    assert ISO.match(unit["started_at"]) and ISO.match(report["reconciler"]["last_pass"]["finished_at"])
    assert report["reconciler"]["running"] is False
    one = orjson.loads(rc.cli("status", "a", "--json", check=0).stdout)
    assert [u["name"] for u in one["units"]] == ["a"]
    missing = rc.cli("status", "nope")
    assert missing.returncode == 1 and missing.stderr.strip() == "reconciler: no unit named 'nope'"


def test_bad_input_is_one_line_never_a_traceback(rc):
    for args in (["--driver", "nosuch", "--once"], ["validate", str(rc.specs / "missing.toml")], ["logs", "nope"]):
        rc.spec("x.toml", 'command = ["sleep", "9201"]\n')
        out = rc.cli(*args)
        assert out.returncode != 0, args
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) >= 1, args
    (rc.specs / "x.toml").unlink()
    out = rc.cli("--once", "--driver", "nosuch")
    assert "Traceback" not in out.stderr


def _break_state(state, what: str):
    """Leave the state directory unusable in one way; the path the error must name."""
    if what == "state is a file":
        state.write_text("")
        return state
    state.mkdir(mode=0o700)
    broken = {"ledger is a directory": "ledger.db", "ledger is garbage": "ledger.db",
              "event log is a directory": "events.jsonl", "logs is a file": "logs",
              "lock is a directory": "lock"}[what]  # fmt: skip
    path = state / broken
    if what == "ledger is garbage":
        path.write_bytes(b"not a database " * 200)
    elif what == "logs is a file":
        path.write_text("")
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "what",
    ["state is a file", "ledger is a directory", "ledger is garbage", "event log is a directory",
     "logs is a file", "lock is a directory"],
)  # fmt: skip
def test_an_unusable_state_directory_is_one_line_naming_it_and_nothing_starts(rc, what):
    rc.spec("st.toml", 'command = ["sleep", "9251"]\n')
    path = _break_state(rc.state, what)
    commands = [("--once",), ("status",), ("plan",)] if "ledger" in what or what == "state is a file" else [("--once",)]
    for args in commands:
        out = rc.cli(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert out.stderr.startswith(f"reconciler: {path}") and len(out.stderr.splitlines()) == 1, (args, out.stderr)
    assert pids_tagged(rc.tag) == []


def test_a_start_that_cannot_write_its_state_backs_off_and_the_daemon_stays_up(rc):
    """Where the driver keeps its exit records is a file: each start fails with a clear reason, and is retried."""
    rc.state.mkdir(mode=0o700)
    (rc.state / "run").write_text("")
    rc.spec("rs.toml", 'command = ["sleep", "9252"]\n[restart]\nbackoff_max = "200ms"\n')
    daemon = rc.start_daemon()
    unit = rc.wait_unit("rs", state="backoff")
    assert f"{rc.state / 'run'}" in unit["message"] and "Not a directory" in unit["message"], unit
    assert daemon.poll() is None
    assert not [pid for pid in pids_tagged(rc.tag) if cmdline(pid) == ["sleep", "9252"]]
    (rc.state / "run").unlink()
    rc.wait_unit("rs", state="running")


def test_a_dependency_cycle_is_reported_and_the_last_good_specs_stay_in_force(rc):
    rc.spec("base.toml", 'command = ["sleep", "9261"]\n')
    rc.spec("top.toml", 'command = ["sleep", "9262"]\ndepends_on = ["base"]\n')
    rc.cli("--once", check=0)
    before = {u["name"]: u["pid"] for u in rc.status()["units"]}
    rc.spec("base.toml", 'command = ["sleep", "9263"]\ndepends_on = ["top"]\n')
    out = rc.cli("validate")
    assert out.returncode == 1 and "base.toml: depends_on: dependency cycle base → top → base" in out.stdout + out.stderr
    rc.cli("--once", check=3)
    report = rc.status()
    assert {u["name"]: (u["state"], u["pid"]) for u in report["units"]} == {n: ("running", p) for n, p in before.items()}
    assert sorted(p["error"] for p in report["invalid_specs"]) == [
        "depends_on: dependency cycle base → top → base",
        "depends_on: dependency cycle top → base → top",
    ]


def test_a_daemon_keeps_the_last_good_spec_of_a_file_that_closes_a_cycle(rc):
    """The file's own change is not acted on alone (a key-only pass): the whole pass reports it."""
    rc.spec("base.toml", 'command = ["sleep", "9264"]\n')
    rc.spec("top.toml", 'command = ["sleep", "9265"]\ndepends_on = ["base"]\n')
    rc.start_daemon()
    rc.wait_unit("top", state="running")
    before = {u["name"]: u["pid"] for u in rc.status()["units"]}
    rc.spec("base.toml", 'command = ["sleep", "9266"]\ndepends_on = ["top"]\n')
    report = wait_until(lambda: (r := rc.status())["invalid_specs"] and r, what="the cycle reported")
    assert {u["name"]: (u["state"], u["pid"]) for u in report["units"]} == {n: ("running", p) for n, p in before.items()}
    # Changed again, still on the cycle: its file is what counts, not the last good spec in force.
    last = report["reconciler"]["last_pass"]["finished_at"]
    rc.spec("top.toml", 'command = ["sleep", "9267"]\ndepends_on = ["base"]\n')
    report = wait_until(lambda: (r := rc.status())["reconciler"]["last_pass"]["finished_at"] != last and r, what="a pass")
    assert {u["name"]: (u["state"], u["pid"]) for u in report["units"]} == {n: ("running", p) for n, p in before.items()}
    assert len(report["invalid_specs"]) == 2


def test_events_filter_and_json(rc):
    rc.spec("ev.toml", 'command = ["sleep", "9301"]\n')
    rc.cli("--once", check=0)
    lines = rc.cli("events", "--unit", "ev", "--json", check=0).stdout.splitlines()
    events = [orjson.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["spec.added", "unit.started"]
    assert all(ISO.match(e["ts"]) and e["unit"] == "ev" for e in events)
    assert "unit.started" in rc.cli("events", check=0).stdout


def test_dependencies_start_in_order(rc):
    rc.spec("app.toml", 'command = ["sleep", "9401"]\ndepends_on = ["db"]\n')
    rc.spec("db.toml", 'command = ["sleep", "9402"]\n')
    rc.cli("--once", check=0)
    started = [e["unit"] for e in rc.events("unit.started")]
    assert started == ["db", "app"]


def test_unhealthy_unit_is_restarted(rc, tmp_path):
    # The check fails as many times as the file says, then passes: exactly two failures, however
    # late this test looks, so the new process is never failed by the test's own timing.
    failures_to_come = tmp_path / "failures-to-come"
    failures_to_come.write_text("0")
    check = f'n=$(cat {failures_to_come}); [ "$n" -gt 0 ] || exit 0; echo $((n - 1)) > {failures_to_come}; exit 1'
    rc.spec(
        "hc.toml",
        'command = ["sleep", "9501"]\n'
        f'[health]\ntype = "exec"\ncommand = ["sh", "-c", {orjson.dumps(check).decode()}]\ninterval = "100ms"\nretries = 2\n',
    )
    rc.start_daemon()
    first = rc.wait_unit("hc", state="running", health="healthy")
    staged = tmp_path / "staged"
    staged.write_text("2")
    staged.replace(failures_to_come)
    again = wait_until(lambda: (u := rc.unit("hc")) and u["pid"] not in (None, first["pid"]) and u)
    assert again["restarts"] == 1
    assert any(e["health"] == "unhealthy" for e in rc.events("unit.health", unit="hc"))
    wait_until(lambda: not proc_alive(first["pid"]))
    assert rc.wait_unit("hc", health="healthy")["restarts"] == 1


def test_spec_changes_are_seen_without_a_resync(rc):
    rc.start_daemon("--resync", "3600")
    rc.spec("late.toml", 'command = ["sleep", "9601"]\n')
    unit = rc.wait_unit("late", state="running")
    assert proc_alive(unit["pid"])


def test_missing_specs_directory_stops_nothing(rc):
    rc.spec("keep.toml", 'command = ["sleep", "9701"]\n')
    rc.cli("--once", check=0)
    pid = rc.unit("keep")["pid"]
    os.rename(rc.specs, rc.specs.with_name("specs-away"))
    rc.cli("--once")
    assert rc.unit("keep")["pid"] == pid and proc_alive(pid)


def test_a_new_process_does_not_parse_unchanged_specs(rc):
    from reconciler.loop import Reconciler
    from reconciler.settings import Settings

    rc.spec("a.toml", 'command = ["sleep", "9801"]\n')
    rc.spec("b.toml", 'command = ["sleep", "9802"]\n')
    rc.cli("--once", check=0)
    reconciler = Reconciler(Settings(specs_dir=rc.specs, state_dir=rc.state))
    try:
        assert set(reconciler.reader.read().specs) == {"a", "b"}
        assert reconciler.reader.parse_count == 0
        rc.spec("a.toml", 'command = ["sleep", "9803"]\n')
        assert reconciler.reader.read().specs["a"].command == ("sleep", "9803")
        assert reconciler.reader.parse_count == 1
    finally:
        reconciler.ledger.close()


def test_status_checks_each_process_and_asks_the_driver_about_the_dead(rc):
    rc.spec("a.toml", 'command = ["sleep", "9901"]\n')
    rc.spec("b.toml", 'command = ["sleep", "9902"]\n')
    rc.cli("--once", check=0)
    before = {u["name"]: u for u in rc.status()["units"]}
    os.kill(before["a"]["pid"], signal.SIGKILL)
    wait_until(lambda: not proc_alive(before["a"]["pid"]), what="a's process to die")
    after = {u["name"]: u for u in rc.status()["units"]}
    assert after["a"]["state"] == "exited" and after["a"]["pid"] is None and after["a"]["started_at"] is None
    assert after["a"]["exit_signal"] == signal.SIGKILL or "137" in after["a"]["message"], after["a"]
    assert after["b"] == before["b"] and after["b"]["state"] == "running"
