"""The behaviour every driver must show, checked against real processes and /proc."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import anyio
import pytest

from reconciler.driver import CLOCK_TICKS
from reconciler.errors import DriverError
from reconciler.model import ProcessState

pytestmark = pytest.mark.anyio

PY = sys.executable


async def test_start_then_observe_running_with_the_right_pid(harness):
    handle = await harness.start(["sleep", "1000"])

    observed = (await harness.driver.observe([handle]))["unit"]

    assert observed.state is ProcessState.RUNNING
    assert observed.pid == handle.pid
    assert observed.started_at == handle.started_at
    assert handle.unit == "unit" and handle.driver == harness.driver_name
    assert handle.spec_hash == harness.spec(["sleep", "1000"]).process_hash


async def test_started_at_is_the_wall_clock_time_of_the_start(harness):
    """To the clock tick /proc counts in: health probes and run lengths are measured from it."""
    before = time.time()
    handle = await harness.start(["sleep", "1000"])
    after = time.time()

    slack = 0.001  # reading the wall clock and the boot clock together
    assert before - 1 / CLOCK_TICKS - slack <= handle.started_at <= after + slack


async def test_the_started_process_has_already_exec_d_the_argv(harness):
    argv = [PY, "-c", "import signal; signal.pause()", "two words", ""]
    handle = await harness.start(argv)

    with open(f"/proc/{handle.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:-1] == [os.fsencode(arg) for arg in argv]


async def test_env_is_overlaid_and_cwd_honoured(harness):
    cwd = harness.work / "elsewhere"
    cwd.mkdir()
    script = (
        "import json, os; json.dump({'foo': os.environ.get('FOO'), 'path': os.environ.get('PATH'),"
        " 'cwd': os.getcwd()}, open('env.tmp', 'w')); os.rename('env.tmp', 'env.json')"
    )
    handle = await harness.start([PY, "-c", script], cwd=cwd, env={"FOO": "bar baz"})
    await harness.driver.wait(handle)

    seen = json.loads((cwd / "env.json").read_text())
    assert seen == {"foo": "bar baz", "path": os.environ.get("PATH"), "cwd": str(cwd)}


async def test_a_string_command_runs_under_sh(harness):
    handle = await harness.start(["/bin/sh", "-c", "echo $((6 * 7)) | tr 4 X > answer"])
    await harness.driver.wait(handle)

    assert (harness.work / "answer").read_text() == "X2\n"


async def test_stdout_and_stderr_land_in_the_launch_files(harness):
    spec = harness.spec(["/bin/sh", "-c", "echo to-out; echo to-err >&2"])
    launch = harness.launch(spec)
    handle = await harness.driver.start(launch)
    harness.track(handle.pid)
    await harness.driver.wait(handle)

    assert launch.stdout_path.read_text() == "to-out\n"
    assert launch.stderr_path.read_text() == "to-err\n"


async def test_stdin_is_dev_null(harness):
    spec = harness.spec(["readlink", "/proc/self/fd/0"])
    launch = harness.launch(spec)
    handle = await harness.driver.start(launch)
    await harness.driver.wait(handle)

    await harness.wait_until(lambda: launch.stdout_path.read_text() != "", what="readlink's output")
    assert launch.stdout_path.read_text() == "/dev/null\n"


async def test_the_unit_has_its_own_session_and_process_group(harness):
    handle = await harness.start(["sleep", "1000"])

    assert os.getsid(handle.pid) != os.getsid(0)
    assert os.getpgid(handle.pid) != os.getpgid(0)
    assert os.getpgid(handle.pid) == os.getsid(handle.pid)


async def test_exit_code_is_observed(harness):
    handle = await harness.start(harness.gate("exit 7"))
    harness.release()
    await harness.driver.wait(handle)

    observed = (await harness.driver.observe([handle]))["unit"]

    assert observed.state is ProcessState.EXITED
    assert (observed.exit_code, observed.exit_signal) == (7, None)
    assert observed.pid == handle.pid


async def test_death_by_signal_is_observed_as_the_signal(harness):
    handle = await harness.start(["sleep", "1000"])
    os.kill(handle.pid, signal.SIGKILL)
    await harness.driver.wait(handle)

    observed = (await harness.driver.observe([handle]))["unit"]

    assert observed.state is ProcessState.EXITED
    assert (observed.exit_code, observed.exit_signal) == (None, signal.SIGKILL)


async def test_stop_ends_a_well_behaved_unit_with_its_stop_signal(harness):
    handle = await harness.start(["sleep", "1000"])

    observed = await harness.driver.stop(handle, signal.SIGTERM, 10.0)

    assert observed.state is ProcessState.EXITED
    assert observed.exit_signal == signal.SIGTERM
    assert not harness.alive(handle.pid)


@pytest.mark.parametrize("begun", [False, True], ids=["stop", "begin_stop then stop"])
async def test_the_stop_signal_is_sent_once(harness, begun):
    # Each SIGTERM is counted and survived, so a second delivery would show, and SIGKILL ends it.
    script = (
        "import signal; signal.signal(signal.SIGTERM, lambda *_: open('terms', 'a').write('TERM\\n'));"
        " open('ready', 'w').close()\nwhile True: signal.pause()"
    )
    handle = await harness.start([PY, "-c", script])
    await harness.wait_until((harness.work / "ready").exists, what="the unit to count SIGTERMs")

    sent = harness.driver.begin_stop(handle, signal.SIGTERM) if begun else False
    observed = await harness.driver.stop(handle, signal.SIGTERM, 0.5, signalled=sent)

    assert observed.exit_signal == signal.SIGKILL
    assert (harness.work / "terms").read_text() == "TERM\n"


async def test_the_main_process_gets_a_signal_to_its_unit_once(harness):
    # A real-time signal is queued once per sending, never merged: while it is blocked, every
    # copy sent waits, and the unit counts them by taking them one by one once told to (SIGUSR1).
    script = (
        "import signal; s = {signal.SIGRTMIN}; go = {signal.SIGUSR1};"
        " signal.pthread_sigmask(signal.SIG_BLOCK, s | go); open('ready', 'w').close(); signal.sigwait(go)\n"
        "n = 0\nwhile signal.sigtimedwait(s, 0): n += 1\n"
        "open('got', 'w').write(str(n)); open('done', 'w').close(); signal.pause()"
    )
    handle = await harness.start([PY, "-c", script])
    await harness.wait_until((harness.work / "ready").exists, what="the unit to block the signals")

    assert harness.driver.begin_stop(handle, signal.SIGRTMIN)
    assert harness.driver.signal(handle, signal.SIGUSR1)
    await harness.wait_until((harness.work / "done").exists, what="the unit to take its signals")

    assert (harness.work / "got").read_text() == "1"
    await harness.driver.stop(handle, signal.SIGKILL, 5)


async def test_begin_stop_of_a_stopped_unit_sends_nothing(harness):
    handle = await harness.start(["sleep", "1000"])
    await harness.driver.stop(handle, signal.SIGTERM, 10.0)

    assert harness.driver.begin_stop(handle, signal.SIGTERM) is False


async def test_stop_escalates_to_sigkill_when_the_signal_is_ignored(harness):
    script = (
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " open('ready', 'w').close(); signal.pause()"
    )
    handle = await harness.start([PY, "-c", script])
    await harness.wait_until((harness.work / "ready").exists, what="the unit to ignore SIGTERM")

    observed = await harness.driver.stop(handle, signal.SIGTERM, 0.3)

    assert observed.state is ProcessState.EXITED
    assert observed.exit_signal == signal.SIGKILL
    assert not harness.alive(handle.pid)


async def test_stop_leaves_no_grandchild_behind(harness):
    # The grandchild ignores SIGTERM, so only the escalation to SIGKILL can end it.
    script = "(trap '' TERM; exec sleep 1000) & echo $! > grandchild.tmp; mv grandchild.tmp grandchild; wait"
    handle = await harness.start(["/bin/sh", "-c", script])
    await harness.wait_until((harness.work / "grandchild").exists, what="the grandchild's pid")
    grandchild = int((harness.work / "grandchild").read_text())
    harness.track(grandchild)
    assert harness.alive(grandchild)

    observed = await harness.driver.stop(handle, signal.SIGTERM, 0.3)

    assert observed.state is ProcessState.EXITED
    assert not harness.alive(handle.pid)
    assert not harness.alive(grandchild)


async def test_stop_of_an_exited_unit_succeeds_and_says_how_it_ended(harness):
    handle = await harness.start(harness.gate("exit 7"))
    harness.release()
    await harness.driver.wait(handle)

    first = await harness.driver.stop(handle, signal.SIGTERM, 1.0)
    second = await harness.driver.stop(handle, signal.SIGTERM, 1.0)

    assert first.state is second.state is ProcessState.EXITED
    assert first.exit_code == second.exit_code == 7


async def test_stop_of_a_process_that_is_long_gone_succeeds(harness):
    handle = await harness.start(["sleep", "1000"])
    pid = harness.spawn_unrelated(["true"])
    await harness.wait_until(lambda: harness.start_ticks(pid) is None, what="the helper to be reaped")
    gone = harness.recycled(handle, pid)

    observed = await harness.driver.stop(gone, signal.SIGTERM, 1.0)

    assert observed.state is not ProcessState.RUNNING
    assert harness.alive(handle.pid)  # the unit the handle was forged from is untouched


async def test_wait_returns_when_the_process_exits(harness):
    handle = await harness.start(harness.gate("exit 0"))
    returned = anyio.Event()

    async def waiter():
        await harness.driver.wait(handle)
        returned.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not returned.is_set()
        harness.release()
        with anyio.fail_after(10):
            await returned.wait()

    assert not harness.alive(handle.pid)


async def test_wait_returns_at_once_for_an_exited_process(harness):
    handle = await harness.start(["true"])
    await harness.wait_until(lambda: not harness.alive(handle.pid), what="true to exit")

    with anyio.fail_after(10):  # a bound for a broken driver, not a speed check
        await harness.driver.wait(handle)
        await harness.driver.wait(handle)


async def test_wait_and_stop_of_the_same_unit_can_run_together(harness):
    handle = await harness.start(["sleep", "1000"])
    waited = anyio.Event()

    async def waiter():
        await harness.driver.wait(handle)
        waited.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        observed = await harness.driver.stop(handle, signal.SIGTERM, 10.0)
        with anyio.fail_after(10):
            await waited.wait()

    assert observed.exit_signal == signal.SIGTERM


async def test_one_observe_reports_each_unit_by_name(harness):
    running = await harness.start(["sleep", "1000"], name="running")
    exited = await harness.start(harness.gate("exit 3"), name="exited")
    killed = await harness.start(["sleep", "1000"], name="killed")
    harness.release()
    os.kill(killed.pid, signal.SIGKILL)
    await harness.driver.wait(exited)
    await harness.driver.wait(killed)

    observed = await harness.driver.observe([running, exited, killed])

    assert observed["running"].state is ProcessState.RUNNING
    assert (observed["exited"].state, observed["exited"].exit_code) == (ProcessState.EXITED, 3)
    assert (observed["killed"].state, observed["killed"].exit_signal) == (ProcessState.EXITED, signal.SIGKILL)


async def test_a_new_driver_instance_can_wait_for_an_adopted_unit(harness):
    handle = await harness.start(harness.gate("exit 5"))
    await harness.driver.aclose()
    successor = harness.new_driver()
    returned = anyio.Event()

    async def waiter():
        await successor.wait(handle)
        returned.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not returned.is_set()
        harness.release()

    assert not harness.alive(handle.pid)
    assert (await successor.observe([handle]))["unit"].exit_code == 5


async def test_a_new_driver_instance_adopts_a_running_unit_and_can_stop_it(harness):
    handle = await harness.start(["sleep", "1000"])
    await harness.driver.aclose()
    successor = harness.new_driver()

    observed = (await successor.observe([handle]))["unit"]
    assert (observed.state, observed.pid) == (ProcessState.RUNNING, handle.pid)

    stopped = await successor.stop(handle, signal.SIGTERM, 10.0)
    assert stopped.state is ProcessState.EXITED
    assert stopped.exit_signal == signal.SIGTERM
    assert not harness.alive(handle.pid)


async def test_an_exit_while_no_driver_watches_is_observed_with_its_exit_code(harness):
    handle = await harness.start(harness.gate("exit 7"))
    await harness.driver.aclose()
    harness.release()
    await harness.wait_until(lambda: not harness.alive(handle.pid), what="the unit to exit")

    observed = (await harness.new_driver().observe([handle]))["unit"]

    assert observed.state is ProcessState.EXITED
    assert (observed.exit_code, observed.exit_signal) == (7, None)


async def test_a_recycled_pid_is_never_running_and_never_signalled(harness):
    handle = await harness.start(["sleep", "1000"])
    stranger = harness.spawn_unrelated(["sleep", "1000"])
    forged = harness.recycled(handle, stranger)
    fresh = harness.new_driver()

    for driver in (harness.driver, fresh):
        assert (await driver.observe([forged]))["unit"].state is not ProcessState.RUNNING
        assert driver.signal(forged, signal.SIGKILL) is False
        assert (await driver.stop(forged, signal.SIGKILL, 0.2)).state is not ProcessState.RUNNING
        with anyio.fail_after(10):
            await driver.wait(forged)

    assert harness.alive(stranger)
    assert harness.alive(handle.pid)


async def test_signal_reaches_the_main_process(harness):
    handle = await harness.start(["sleep", "1000"])

    assert harness.driver.signal(handle, signal.SIGUSR1) is True
    await harness.driver.wait(handle)

    observed = (await harness.driver.observe([handle]))["unit"]
    assert observed.exit_signal == signal.SIGUSR1
    assert harness.driver.signal(handle, signal.SIGUSR1) is False


async def test_command_not_found_is_a_permanent_error(harness):
    with pytest.raises(DriverError, match="command not found: no-such-command-here") as caught:
        await harness.start(["no-such-command-here", "x"])
    assert caught.value.transient is False


async def test_a_missing_cwd_is_a_permanent_error(harness):
    with pytest.raises(DriverError, match="cwd: no such directory") as caught:
        await harness.start(["sleep", "1000"], cwd=harness.work / "missing")
    assert caught.value.transient is False
