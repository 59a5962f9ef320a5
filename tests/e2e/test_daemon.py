"""The numbered behaviours of the core, driven through the real CLI against real processes."""

from __future__ import annotations

import ctypes
import os
import json
import signal
import stat
import sys

import pytest

from tests.conftest import cmdline, kill_tagged, proc_alive, wait_until

PR_SET_CHILD_SUBREAPER = 36

PY = sys.executable


def sleeper(tag: str, **extra: str) -> str:
    """A spec body whose process is `sleep` with a unique argument (findable in /proc)."""
    lines = [f'command = ["sleep", "{tag}"]']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


# 1. spec added / changed / in-place / removed / disabled --------------------------------------


def test_spec_lifecycle_follows_the_files(rc):
    rc.start_daemon()
    rc.spec("web.toml", sleeper("1001"))
    web = rc.wait_unit("web", state="running")
    assert cmdline(web["pid"]) == ["sleep", "1001"]
    assert web["driver"] == "posix" and web["spec_hash"].startswith("sha256:")

    # A field the process does not see: applied live, same process.
    rc.spec("web.toml", sleeper("1001") + '[restart]\npolicy = "on-failure"\n')
    changed = wait_until(lambda: rc.events("spec.changed", unit="web"), what="spec.changed")[0]
    wait_until(lambda: [e for e in rc.events("pass.completed") if e["ts"] >= changed["ts"]], what="a pass after it")
    assert rc.unit("web")["pid"] == web["pid"] and proc_alive(web["pid"])
    assert len(rc.events("unit.started", unit="web")) == 1

    # A field the process sees: stop the old one, start the new one.
    rc.spec("web.toml", sleeper("1002"))
    new = wait_until(lambda: (u := rc.unit("web")) and u["pid"] != web["pid"] and u["state"] == "running" and u)
    assert cmdline(new["pid"]) == ["sleep", "1002"]
    wait_until(lambda: not proc_alive(web["pid"]), what="old process gone")

    # enabled = false: stopped and kept stopped.
    rc.spec("web.toml", sleeper("1002", enabled="false"))
    rc.wait_unit("web", state="stopped", pid=None)
    wait_until(lambda: not proc_alive(new["pid"]))

    # Removed: stopped and forgotten; its history stays in the event log.
    rc.spec("web.toml", sleeper("1003"))
    last = rc.wait_unit("web", state="running")
    (rc.specs / "web.toml").unlink()
    wait_until(lambda: rc.unit("web") is None, what="web forgotten")
    assert not proc_alive(last["pid"])
    assert rc.events("spec.removed", unit="web") and rc.events("unit.stopped", unit="web")


def test_plan_shows_each_change_and_changes_nothing(rc):
    rc.spec("a.toml", sleeper("2001"))
    out = rc.cli("plan", check=2)
    assert "start" in out.stdout and "a" in out.stdout
    assert rc.cli("plan", check=2).stdout == out.stdout  # still pending: plan changed nothing
    rc.cli("--once", check=0)
    assert rc.cli("plan", check=0).stdout.strip() == "nothing to do"
    rc.spec("a.toml", sleeper("2001") + "[stop]\ntimeout = \"3s\"\n")
    assert "in-place" in rc.cli("plan", check=2).stdout
    rc.spec("a.toml", sleeper("2002"))
    assert "restart" in rc.cli("plan", "--json", check=2).stdout


# 2. exits, restart policy and backoff -------------------------------------------------------------


def test_crash_restarts_with_doubling_backoff_then_fails(rc):
    rc.spec(
        "crash.toml",
        'command = ["sh", "-c", "exit 3"]\n[restart]\nbackoff_initial = "50ms"\nbackoff_max = "150ms"\nmax_retries = 4\n',
    )
    rc.start_daemon()
    unit = rc.wait_unit("crash", state="failed")
    assert unit["exit_code"] == 3 and unit["restarts"] == 3
    delays = [e["delay_ms"] for e in rc.events("unit.backoff", unit="crash")]
    assert delays[:3] == [50, 100, 150]
    assert rc.events("unit.failed", unit="crash")

    # A restart request brings a failed unit back (and it fails again, by itself).
    rc.cli("restart", "crash", check=0)
    wait_until(lambda: len(rc.events("unit.failed", unit="crash")) == 2, what="second failure")


def test_restart_policy_on_failure_and_kill(rc):
    rc.spec("ok.toml", 'command = ["sh", "-c", "exit 0"]\n[restart]\npolicy = "on-failure"\n')
    rc.spec("victim.toml", sleeper("3001") + '[restart]\npolicy = "on-failure"\nbackoff_initial = "0s"\n')
    rc.start_daemon()
    rc.wait_unit("ok", state="exited", exit_code=0)
    victim = rc.wait_unit("victim", state="running")
    os.kill(victim["pid"], signal.SIGKILL)
    again = wait_until(lambda: (u := rc.unit("victim")) and u["pid"] not in (None, victim["pid"]) and u)
    assert again["restarts"] == 1
    exits = rc.events("unit.exited", unit="victim")
    assert exits[0]["exit_signal"] == 9 and exits[0]["exit_code"] is None
    assert len(rc.events("unit.started", unit="ok")) == 1


# 3. invalid specs ------------------------------------------------------------------------------------


def test_invalid_spec_is_reported_and_keeps_the_last_good_one(rc):
    rc.spec("good.toml", sleeper("4001"))
    rc.spec("web.toml", sleeper("4002"))
    rc.start_daemon()
    web = rc.wait_unit("web", state="running")
    good = rc.wait_unit("good", state="running")

    rc.spec("web.toml", sleeper("4002") + '[restart]\nbackoff_max = "30 seconds"\n')
    rc.spec("bad.toml", "command = [")
    for name in (".hidden.toml", "web.toml~", "web.toml.swp", "web.yaml-bak", "notes.md"):
        (rc.specs / name).write_text("garbage = ")
    wait_until(lambda: len(rc.status()["invalid_specs"]) == 2, what="two invalid specs")
    problems = {p["path"]: p["error"] for p in rc.status()["invalid_specs"]}
    assert problems[str(rc.specs / "web.toml")] == 'restart.backoff_max: expected a duration like "30s", got "30 seconds"'
    assert problems[str(rc.specs / "bad.toml")].startswith("invalid TOML")
    assert {e["path"] for e in rc.events("spec.invalid")} == set(problems)

    out = rc.cli("validate", check=1)
    assert 'web.toml: restart.backoff_max: expected a duration like "30s", got "30 seconds"' in out.stderr
    assert "Traceback" not in out.stderr

    # Nothing stopped because of a typo; the other units are untouched.
    assert rc.unit("web")["pid"] == web["pid"] and proc_alive(web["pid"])
    assert rc.unit("good")["pid"] == good["pid"]
    assert {u["name"] for u in rc.status()["units"]} == {"good", "web"}


def test_duplicate_names_are_invalid(rc):
    rc.spec("a.toml", 'name = "same"\n' + sleeper("4101"))
    rc.spec("b.toml", 'name = "same"\n' + sleeper("4102"))
    assert rc.cli("--once").returncode == 3
    errors = [p["error"] for p in rc.status()["invalid_specs"]]
    assert len(errors) == 2 and all("duplicate unit name" in e for e in errors)


def test_a_new_spec_file_is_started_before_the_whole_pass(rc):
    rc.spec("base.toml", sleeper("4201"))
    rc.start_daemon()
    rc.wait_unit("base", state="running")
    staged = rc.specs.parent / "new.toml"  # written outside, then moved in: one event
    staged.write_text(sleeper("4202"))
    os.rename(staged, rc.specs / "new.toml")
    rc.wait_unit("new", state="running")
    added = rc.events("spec.added", unit="new")[0]
    # The key-only pass read that file alone and launched the start: no whole pass since has had to act.
    wait_until(lambda: [e for e in rc.events("pass.completed") if e["ts"] >= added["ts"]], what="a pass after it")
    assert all(e["actions"] == 0 for e in rc.events("pass.completed") if e["ts"] >= added["ts"])
    assert len(rc.events("unit.started", unit="new")) == 1


def test_specs_behind_a_symbolic_link_are_watched_across_swaps(rc):
    """As git-sync and Kubernetes volumes deploy: the specs path is a link, renamed over atomically."""
    root = rc.specs.parent
    for rev, argument in (("rev1", "4701"), ("rev2", "4702")):
        (root / rev).mkdir()
        (root / rev / "web.toml").write_text(sleeper(argument))
    (root / "rev2" / "api.toml").write_text(sleeper("4703"))
    deploy = root / "deploy"
    deploy.symlink_to("rev1")
    rc.env["RECONCILER_SPECS"] = str(deploy)
    rc.start_daemon("--resync", "3600")  # only the watcher can bring a change in time
    first = rc.wait_unit("web", state="running")

    (deploy / "db.toml").write_text(sleeper("4704"))  # a change behind the link
    db = rc.wait_unit("db", state="running")

    (root / "next").symlink_to("rev2")
    os.rename(root / "next", deploy)  # the new revision: web changed, api added, db removed
    api = rc.wait_unit("api", state="running")
    web = wait_until(lambda: (u := rc.unit("web")) and u["pid"] != first["pid"] and u["state"] == "running" and u)
    wait_until(lambda: rc.unit("db") is None, what="db forgotten")
    assert cmdline(api["pid"]) == ["sleep", "4703"] and cmdline(web["pid"]) == ["sleep", "4702"]
    assert not proc_alive(db["pid"])

    (deploy / "web.toml").write_text(sleeper("4705"))  # a change in the new revision
    wait_until(lambda: (u := rc.unit("web")) and u["pid"] != web["pid"] and u["state"] == "running" and u)
    assert cmdline(rc.unit("web")["pid"]) == ["sleep", "4705"]
    assert rc.unit("web")["spec_path"] == str(deploy / "web.toml")


def test_a_kubernetes_style_volume_update_is_applied_at_once(rc):
    """A ConfigMap volume: each spec is a link into `..data`, itself a link swapped to a new directory."""
    for rev, argument in (("..rev1", "4801"), ("..rev2", "4802")):
        (rc.specs / rev).mkdir()
        (rc.specs / rev / "web.toml").write_text(sleeper(argument))
    (rc.specs / "..data").symlink_to("..rev1")
    (rc.specs / "web.toml").symlink_to("..data/web.toml")
    rc.start_daemon("--resync", "3600")  # only the watcher can bring the change in time
    first = rc.wait_unit("web", state="running")

    (rc.specs / "..data_tmp").symlink_to("..rev2")
    os.rename(rc.specs / "..data_tmp", rc.specs / "..data")
    web = wait_until(lambda: (u := rc.unit("web")) and u["pid"] != first["pid"] and u["state"] == "running" and u)
    assert cmdline(web["pid"]) == ["sleep", "4802"]


def test_a_new_file_claiming_a_running_units_name_starts_nothing(rc):
    rc.spec("a.toml", 'name = "same"\n' + sleeper("4301"))
    rc.start_daemon()
    first = rc.wait_unit("same", state="running")
    rc.spec("b.toml", 'name = "same"\n' + sleeper("4302"))
    wait_until(lambda: len(rc.events("spec.invalid")) == 2, what="both files reported as duplicates")
    # The last good spec stays in force: the same process, and no second one.
    assert rc.unit("same")["pid"] == first["pid"] and proc_alive(first["pid"])
    assert len(rc.events("unit.started", unit="same")) == 1
    assert _count_cmdline(["sleep", "4302"]) == 0


# 4. adoption after SIGKILL of the reconciler --------------------------------------------------------


@pytest.fixture
def orphans_come_here(rc):
    """Make this test process the subreaper of what it starts, so that it can reap orphans itself.

    At the end every process of the test is killed and the orphans among them reaped here.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        kill_tagged(rc.tag)
        daemons = {daemon.pid for daemon in rc.daemons}
        for pid in _children(os.getpid()):
            if pid not in daemons:
                os.waitpid(pid, 0)


def test_killed_reconciler_adopts_and_learns_real_exit_codes(rc, orphans_come_here):
    rc.spec("keeper.toml", sleeper("5001"))
    rc.spec("quitter.toml", 'command = ["sh", "-c", "read x < /dev/null; sleep 100000; exit 7"]\n'
            '[restart]\npolicy = "never"\n')
    daemon = rc.start_daemon()
    keeper = rc.wait_unit("keeper", state="running")
    quitter = rc.wait_unit("quitter", state="running")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)

    # While no reconciler runs: one unit ends with exit code 7 (its sleep is killed, the shell exits 7).
    # The orphan is reaped before the next daemon looks (as a real init does): /proc forgets how it
    # ended, so only what was written down at its exit can tell.
    sleep_pid = wait_until(lambda: [p for p in _children(quitter["pid"])], what="quitter's sleep")[0]
    os.kill(sleep_pid, signal.SIGKILL)
    wait_until(lambda: not proc_alive(quitter["pid"]))
    if quitter["pid"] in _children(os.getpid()):
        os.waitpid(quitter["pid"], 0)
    assert not os.path.exists(f"/proc/{quitter['pid']}")
    assert proc_alive(keeper["pid"])
    assert rc.unit("quitter")["state"] == "exited"  # status tells the truth with no daemon

    rc.start_daemon()
    rc.wait_unit("quitter", state="exited", exit_code=7)
    assert rc.unit("keeper")["pid"] == keeper["pid"]
    assert [e["pid"] for e in rc.events("unit.adopted", unit="keeper")] == [keeper["pid"]]
    assert len(rc.events("unit.started", unit="keeper")) == 1
    assert _count_cmdline(["sleep", "5001"]) == 1


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def _count_cmdline(argv: list[str]) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if cmdline(int(entry.name)) == argv:
                    count += 1
            except OSError:
                pass
    return count


# 5. one reconciler per state directory -------------------------------------------------------------


def test_second_reconciler_is_refused(rc):
    daemon = rc.start_daemon()
    second = rc.cli("run", timeout=30)
    assert second.returncode == 1 and f"pid {daemon.pid}" in second.stderr
    once = rc.cli("--once", check=0)
    assert f"pid {daemon.pid}" in once.stdout and "nothing done" in once.stdout


# 6. signals ---------------------------------------------------------------------------------------------


def test_sigterm_leaves_units_running_and_sighup_forces_a_pass(rc):
    rc.spec("stay.toml", sleeper("6001"))
    daemon = rc.start_daemon()
    stay = rc.wait_unit("stay", state="running")
    passes = len(rc.events("pass.completed"))
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: len(rc.events("pass.completed")) > passes, what="a pass after SIGHUP")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    assert proc_alive(stay["pid"])
    assert rc.events("reconciler.stopped")
    assert rc.status()["reconciler"]["running"] is False


def test_stop_on_exit_stops_everything(rc):
    rc.spec("a.toml", sleeper("6101"))
    rc.spec("b.toml", 'command = ["sh", "-c", "trap \\"\\" TERM; sleep 6102 & wait"]\n[stop]\ntimeout = "300ms"\n')
    caught = rc.specs.parent / "c.caught"
    handler = f'trap "echo USR1 >> {caught}; exit 0" USR1; sleep 6103 & wait'
    rc.spec("c.toml", f'command = ["sh", "-c", {json.dumps(handler)}]\n[stop]\nsignal = "SIGUSR1"\n')
    daemon = rc.start_daemon("--stop-on-exit")
    a = rc.wait_unit("a", state="running")
    b = rc.wait_unit("b", state="running")
    c = rc.wait_unit("c", state="running")
    grandchild = wait_until(lambda: _children(b["pid"]), what="b's sleep")[0]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    for pid in (a["pid"], b["pid"], grandchild, c["pid"]):
        assert not proc_alive(pid)
    assert caught.read_text() == "USR1\n"  # each unit's own stop signal, sent once


# 7. restart requests ------------------------------------------------------------------------------------


def test_restart_request_restarts_without_touching_the_spec(rc):
    path = rc.spec("svc.toml", sleeper("7001"))
    before = path.read_bytes()
    rc.start_daemon()
    first = rc.wait_unit("svc", state="running")
    rc.cli("restart", "svc", check=0)
    again = wait_until(lambda: (u := rc.unit("svc")) and u["pid"] not in (None, first["pid"]) and u)
    assert again["restarts"] == 1 and path.read_bytes() == before
    assert rc.events("unit.restart_requested", unit="svc")
    assert rc.cli("restart", "nosuch").returncode == 1


def test_restart_request_is_carried_out_by_the_next_once(rc):
    rc.spec("job.toml", sleeper("7101"))
    rc.cli("--once", check=0)
    first = rc.unit("job")
    rc.cli("restart", "job", check=0)
    assert rc.unit("job")["pid"] == first["pid"]  # only recorded
    rc.cli("--once", check=0)
    assert rc.unit("job")["pid"] != first["pid"]
    assert not proc_alive(first["pid"])


# 8. spec files as code: permissions --------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when running as root")
def test_writable_spec_is_rejected_as_root(rc):
    path = rc.spec("open.toml", sleeper("8001"))
    os.chmod(path, 0o666)
    assert rc.cli("--once").returncode == 3
    (problem,) = rc.status()["invalid_specs"]
    assert "writable by others" in problem["error"]
    assert rc.unit("open") is None
    assert stat.S_IMODE(os.stat(rc.state).st_mode) == 0o700
    rc.cli("--once", "--allow-insecure-specs", check=0)
    assert rc.unit("open")["state"] == "running"



@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when running as root")
def test_fixing_a_specs_permissions_is_applied_at_once(rc):
    path = rc.spec("open.toml", sleeper("8002"))
    os.chmod(path, 0o666)
    rc.start_daemon("--resync", "3600")  # only the watcher can bring the fix in time
    wait_until(lambda: rc.status()["invalid_specs"], what="the insecure spec reported")
    os.chmod(path, 0o644)
    rc.wait_unit("open", state="running")
    assert rc.status()["invalid_specs"] == []


# cron ---------------------------------------------------------------------------------------------------


def test_once_from_cron(rc):
    rc.spec("cron.toml", 'command = ["sh", "-c", "sleep 100000 & wait; exit 7"]\n[restart]\npolicy = "never"\n')
    rc.cli("--once", check=0)
    unit = rc.unit("cron")
    assert unit["state"] == "running" and proc_alive(unit["pid"])  # outlives --once
    os.kill(_children(unit["pid"])[0], signal.SIGKILL)
    wait_until(lambda: not proc_alive(unit["pid"]))
    rc.cli("--once", check=0)
    assert rc.unit("cron")["exit_code"] == 7 and rc.unit("cron")["state"] == "exited"
    rc.spec("bad.toml", "command = 3")
    assert rc.cli("--once").returncode == 3


def test_logs_are_captured(rc):
    rc.spec("talk.toml", 'command = ["sh", "-c", "echo hello out; echo hello err >&2; exec sleep 100000"]\n')
    rc.cli("--once", check=0)
    wait_until(lambda: "hello out" in rc.cli("logs", "talk").stdout, what="stdout captured")
    assert "hello err" in rc.cli("logs", "talk", "--stderr", "-n", "5").stdout


# subreaper -----------------------------------------------------------------------------------------------


def test_orphans_are_reparented_to_the_daemon_and_reaped(rc):
    # The unit's short-lived grandchild loses its parent at once; it must not linger as a zombie.
    rc.spec("orphans.toml", 'command = ["sh", "-c", "(sleep 1 &); exec sleep 100000"]\n')
    daemon = rc.start_daemon()
    rc.wait_unit("orphans", state="running")

    def orphan_states() -> list[str]:
        states = []
        for pid in _children(daemon.pid):
            try:
                if "reconciler_drivers._keeper" in cmdline(pid):
                    continue  # the daemon's exit keeper
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # reaped meanwhile
            states.append(fields[0].decode())
        return states

    wait_until(lambda: len(orphan_states()) == 2, what="the orphan reparented to the daemon")
    wait_until(lambda: orphan_states() == ["S"], what="the orphan reaped, no zombie left")
