"""`status` observes without a driver while /proc vouches for a process, and asks the driver otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconciler_drivers import _linux
from reconciler.driver import process_start_time
from reconciler.model import ProcessState
from reconciler.settings import Settings
from reconciler.status import observe_recorded
from tests.conftest import wait_until

# A driver nobody installed: whatever reaches it comes back UNKNOWN, so a RUNNING
# answer can only come from the check status makes itself.
ABSENT_DRIVER = "absent-for-this-test"


def create_time(pid: int) -> float:
    """When the process started, in wall-clock seconds, as the kernel counts it."""
    return process_start_time(_linux.read_stat(pid).start_ticks)


def handle(unit: str, pid: int | None, started_at: float | None) -> dict:
    return {"driver": ABSENT_DRIVER, "unit": unit, "spec_hash": "x", "pid": pid, "started_at": started_at, "data": {}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(specs_dir=tmp_path / "specs", state_dir=tmp_path / "state")


def spawn(processes: list, *argv: str) -> subprocess.Popen:
    proc = subprocess.Popen(list(argv), start_new_session=True)
    processes.append(proc)
    return proc


def test_a_live_process_that_started_when_recorded_is_running(settings, processes):
    proc = spawn(processes, "sleep", "60")
    started_at = create_time(proc.pid)
    observed = observe_recorded(settings, [handle("web", proc.pid, started_at)])
    assert observed["web"].state is ProcessState.RUNNING
    assert observed["web"].pid == proc.pid and observed["web"].started_at == started_at


def test_another_start_time_on_the_same_pid_is_left_to_the_driver(settings, processes):
    """A recycled pid: the process runs, but it is not the one recorded."""
    proc = spawn(processes, "sleep", "60")
    started_at = create_time(proc.pid) - 5.0
    observed = observe_recorded(settings, [handle("web", proc.pid, started_at)])
    assert observed["web"].state is ProcessState.UNKNOWN
    assert "not installed" in observed["web"].message


def test_a_zombie_is_never_running(settings, processes):
    proc = spawn(processes, "true")
    started_at = create_time(proc.pid)
    # Not waited for: it stays a zombie (its start time still matches) until the fixture reaps it.
    wait_until(lambda: _linux.read_stat(proc.pid).zombie, what="a zombie")
    observed = observe_recorded(settings, [handle("web", proc.pid, started_at)])
    assert observed["web"].state is ProcessState.UNKNOWN


def test_a_reaped_process_and_a_handle_without_pid_are_left_to_the_driver(settings, processes):
    proc = spawn(processes, "true")
    started_at = create_time(proc.pid)
    proc.wait(timeout=10)
    observed = observe_recorded(settings, [handle("gone", proc.pid, started_at), handle("never", None, None)])
    assert {unit: obs.state for unit, obs in observed.items()} == {
        "gone": ProcessState.UNKNOWN,
        "never": ProcessState.UNKNOWN,
    }


STATUS_IMPORTS = """
import sys
from reconciler.cli import main
main(["status", "--json"], standalone_mode=False)
print(" ".join(m for m in ("anyio", "asyncio", "importlib.metadata", "sqlite_utils") if m in sys.modules), file=sys.stderr)
"""


def test_status_of_live_processes_starts_no_event_loop_and_loads_no_driver(tmp_path: Path, processes):
    """What makes `status` fast, checked where it is decided: the modules it never needs."""
    from reconciler.ledger import Ledger
    from reconciler.model import Handle, UnitRecord, UnitState

    proc = spawn(processes, "sleep", "60")
    started_at = create_time(proc.pid)
    state = tmp_path / "state"
    with Ledger(state / "ledger.db") as ledger:
        recorded = Handle(driver="posix", unit="web", spec_hash="x", pid=proc.pid, started_at=started_at)
        ledger.save([UnitRecord(name="web", handle=recorded, pid=proc.pid, state=UnitState.RUNNING)])
    env = {"RECONCILER_SPECS": str(tmp_path / "specs"), "RECONCILER_STATE": str(state), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", STATUS_IMPORTS], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f'"pid": {proc.pid}' in out.stdout and '"state": "running"' in out.stdout
    assert out.stderr.strip() == ""
