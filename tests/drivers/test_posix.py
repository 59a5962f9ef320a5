"""Facts only the posix driver has: its shim's record, direct starts, /proc details, ids, pidfds.

`posix` runs a test every way a unit starts (under the shim, as by --once; directly, as by a
daemon, with the compiled spawn and without it); `shim` and `direct` run it under the shim only,
or directly only.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import anyio
import attrs
import orjson
import pytest

from reconciler.errors import DriverError
from reconciler.model import Handle, ProcessState
from reconciler_drivers import _keeper, _spawn
from reconciler_drivers._group import UnitGroup
from reconciler_drivers.posix import (
    UNRECORDED,
    Identity,
    KnownHandles,
    PidfdTable,
    PosixDriver,
    ShimRecord,
    exit_facts,
    find_record,
)

from tests.conftest import cmdline, process_stat

from .conftest import KITS, children, running_harness

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["posix", "posix-resident", "posix-resident-python"])
async def posix(request, tmp_path, anyio_backend):
    async with running_harness(KITS[request.param], tmp_path) as h:
        yield h


@pytest.fixture
async def shim(tmp_path, anyio_backend):
    async with running_harness(KITS["posix"], tmp_path) as h:
        yield h


@pytest.fixture(params=["posix-resident", "posix-resident-python"])
async def direct(request, tmp_path, anyio_backend):
    async with running_harness(KITS[request.param], tmp_path) as h:
        yield h


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def ignored_signals(pid: int) -> set[int]:
    """Signals the process ignores, among those a program may use.

    glibc's posix_spawn leaves its two internal signals (32, 33) ignored across
    the exec; glibc programs re-install their handlers for them at start-up.
    """
    mask = int(proc_status(pid)["SigIgn"], 16)
    return {sig for sig in signal.valid_signals() if mask & (1 << (sig - 1))}


def status_file(handle: Handle) -> Path:
    return Path(handle.data["status_file"])


def recorded_status(handle: Handle) -> str | None:
    """The status the shim recorded for this start, None until it has."""
    try:
        lines = status_file(handle).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return None
    mine = [line.split()[1] for line in lines if line.endswith("\n") and line.split()[0] == handle.data["token"]]
    return mine[-1] if mine else None


async def shim_record(h, handle: Handle) -> str:
    await h.wait_until(lambda: recorded_status(handle) is not None, what="the shim's record")
    return recorded_status(handle)


async def reaped(h, handle: Handle) -> None:
    """Wait until the unit's process has been reaped by its parent (shim or reaper): /proc forgets it."""
    if handle.data["shim_pid"] is not None:
        await shim_record(h, handle)
    await h.wait_until(lambda: h.start_ticks(handle.pid) != handle.data["start_ticks"], what="the reaping")


async def exited_unobserved(h, then: str) -> Handle:
    """Start a unit, close the driver, let the unit run `then`, wait for the shim's record."""
    handle = await h.start(h.gate(then))
    await h.driver.aclose()
    h.release()
    await shim_record(h, handle)
    return handle


# --- pure rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    "wait_status, shell_status, expected",
    [
        (7 << 8, None, (7, None, "")),
        (signal.SIGKILL, None, (None, signal.SIGKILL, "")),
        (130 << 8, 130, (130, None, "")),  # the kernel's exact status wins over the record
        (None, 7, (7, None, "")),
        (None, 128, (128, None, "")),
        (None, None, (None, None, UNRECORDED)),
    ],
)
def test_exit_facts(wait_status, shell_status, expected):
    record = None if shell_status is None else ShimRecord(shell_status, 0.0)
    assert exit_facts(wait_status, record) == expected


def test_exit_facts_from_the_keepers_record_are_exact():
    assert exit_facts(None, ShimRecord(130 << 8, 0.0, exact=True)) == (130, None, "")
    assert exit_facts(None, ShimRecord(signal.SIGKILL, 0.0, exact=True)) == (None, signal.SIGKILL, "")


def test_exit_facts_above_128_from_the_record_are_ambiguous():
    code, sig, message = exit_facts(None, ShimRecord(137, 0.0))
    assert (code, sig) == (None, None)
    assert message == (
        "exit status 137: killed by signal 9 or exited with code 137; the shim's record cannot tell which"
    )


@pytest.mark.parametrize(
    "text, key, expected",
    [
        (b"aa 1\nbb 2\n", (b"aa",), (1, False, False)),
        (b"aa 1\nbb 2\n", (b"bb",), (2, False, True)),
        (b"aa 1\nbb 2\naa 3\n", (b"aa",), (3, False, True)),  # the latest record of a key wins
        (b"aa 1\nbb 2", (b"bb",), None),  # still being written
        (b"aa 1\nbb 2", (b"aa",), (1, False, True)),
        (b"12 34 7\n", (b"12", b"34"), (7, False, True)),  # the format of shims before tokens
        (b"aa w2304\nbb 2\n", (b"aa",), (2304, True, False)),  # the exit keeper's exact wait status
        (b"aa wx\n", (b"aa",), None),
        (b"12 34 7\n", (b"34",), None),
        (b"aa x\n\naa\n", (b"aa",), None),
        (b"", (b"aa",), None),
    ],
)
def test_find_record(text, key, expected):
    assert find_record(text, key) == expected


def test_the_compiled_spawn_is_built_wherever_it_can_be():
    """Its build is optional, so a C error would only show here, as a slower driver."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) is None or not headers.exists():
        pytest.skip(f"no C compiler ({compiler}) or no {headers}: the driver starts units in Python")
    assert _spawn.spawn_logged is not None


def test_available_here():
    assert PosixDriver.available() is None


def test_known_handles_parse_each_handle_object_once_and_forget_it_with_the_handle():
    data = {"start_ticks": 5, "boot_id": "b", "shim_pid": 3, "shim_start_ticks": 4, "pgid": 3, "status_file": "/s"}
    handle = Handle(driver="posix", unit="u", spec_hash="h", pid=7, started_at=1.0, data=data)
    twin = Handle(driver="posix", unit="u", spec_hash="h", pid=7, started_at=1.0, data=dict(data))
    known = KnownHandles()

    first = known.get(handle)
    assert (first.ident.key, first.ident.token, first.revisited) == ((7, 5), None, False)
    assert first.running.state is ProcessState.RUNNING and first.running.pid == 7
    again = known.get(handle)
    assert again is first and again.revisited
    assert known.get(twin) is not first  # an equal value is another object: parsed on its own

    del handle, first, again
    assert len(known) == 1  # the twin's entry only


# --- the shim's record -------------------------------------------------------------


async def test_the_shim_records_its_token_and_status(shim):
    handle = await shim.start(shim.gate("exit 7"))
    shim.release()

    assert await shim_record(shim, handle) == "7"
    assert status_file(handle).read_text() == f"{handle.data['token']} 7\n"
    assert status_file(handle).parent == shim.state_dir / "run" / "unit"


async def test_each_start_has_its_own_token_and_record(shim):
    first = await shim.start(shim.gate("exit 3"))
    shim.release()
    assert await shim_record(shim, first) == "3"
    second = await shim.start(["sh", "-c", "exit 4"])
    assert await shim_record(shim, second) == "4"

    assert first.data["token"] != second.data["token"]
    observed = await shim.new_driver().observe([first])
    # Its record is no longer the file's last: its time is the first watcher's, here unknown.
    assert (observed["unit"].exit_code, observed["unit"].exited_at) == (3, None)


async def test_a_grown_status_file_is_removed_at_the_next_start(shim):
    run_dir = shim.state_dir / "run" / "unit"
    run_dir.mkdir(parents=True)
    (run_dir / "status").write_text("0123456789abcdef 1\n" * 1000)

    handle = await shim.start(["sh", "-c", "exit 5"])

    assert await shim_record(shim, handle) == "5"
    assert status_file(handle).read_text() == f"{handle.data['token']} 5\n"


async def test_a_record_in_the_old_format_still_counts_for_a_handle_without_token(shim):
    handle = await shim.start(shim.gate("exit 7"))
    shim.release()
    await shim_record(shim, handle)
    old = attrs.evolve(handle, data={k: v for k, v in handle.data.items() if k != "token"})
    status_file(old).write_text(f"{handle.pid} {handle.data['start_ticks']} 9\n")
    await shim.wait_until(lambda: not shim.alive(handle.data["shim_pid"]), what="the shim to exit")

    observed = (await shim.new_driver().observe([old]))["unit"]
    mine = (await shim.new_driver().observe([handle]))["unit"]

    assert (observed.exit_code, mine.exit_code, mine.message) == (9, None, UNRECORDED)


async def test_the_shim_outlives_the_stop_signal_and_records_it(shim):
    handle = await shim.start(["sleep", "1000"])

    await shim.driver.stop(handle, signal.SIGTERM, 10.0)

    assert await shim_record(shim, handle) == str(128 + signal.SIGTERM)


async def test_an_unobserved_status_above_128_is_reported_as_unknown(shim):
    handle = await exited_unobserved(shim, "exit 130")

    observed = (await shim.new_driver().observe([handle]))["unit"]

    assert observed.state is ProcessState.EXITED
    assert (observed.exit_code, observed.exit_signal) == (None, None)
    assert "exit status 130" in observed.message and "cannot tell" in observed.message
    assert observed.exited_at == status_file(handle).stat().st_mtime


async def test_an_unobserved_kill_is_reported_as_unknown(shim):
    handle = await shim.start(["sleep", "1000"])
    await shim.driver.aclose()
    os.kill(handle.pid, signal.SIGKILL)
    await shim_record(shim, handle)

    observed = (await shim.new_driver().observe([handle]))["unit"]

    assert (observed.exit_code, observed.exit_signal) == (None, None)
    assert "exit status 137" in observed.message


async def test_a_watching_driver_tells_exit_130_from_a_signal(posix):
    handle = await posix.start(posix.gate("exit 130"))
    posix.release()
    await posix.driver.wait(handle)

    observed = (await posix.driver.observe([handle]))["unit"]

    assert (observed.exit_code, observed.exit_signal) == (130, None)


async def test_no_record_for_this_process_means_unknown_exit(shim):
    handle = await shim.start(["sleep", "1000"])
    gone_pid = shim.spawn_unrelated(["true"])
    await shim.wait_until(lambda: shim.start_ticks(gone_pid) is None, what="the helper to be reaped")
    forged = shim.recycled(handle, gone_pid)
    # A record of some other start in the same file must not be taken for this one's.
    status_file(forged).write_text(f"{gone_pid} 1 7\n")
    forged_old = attrs.evolve(forged, data={k: v for k, v in forged.data.items() if k != "token"})
    assert (await shim.new_driver().observe([forged_old]))["unit"].message == UNRECORDED
    status_file(forged).write_text("0123456789abcdef 7\n")

    observed = (await shim.new_driver().observe([forged]))["unit"]

    assert observed.state is ProcessState.EXITED
    assert (observed.exit_code, observed.exit_signal, observed.message) == (None, None, UNRECORDED)


# --- starting --------------------------------------------------------------------------


async def test_commands_that_exit_at_once_still_start(posix):
    for command, code in [(["true"], 0), (["/bin/sh", "-c", "exit 7"], 7)] * 10:
        handle = await posix.start(command)
        await posix.driver.wait(handle)
        observed = (await posix.driver.observe([handle]))["unit"]
        assert (observed.state, observed.exit_code) == (ProcessState.EXITED, code)


async def test_a_command_that_cannot_be_executed_is_a_start_error(posix):
    script = posix.work / "broken"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)

    with pytest.raises(DriverError, match="could not be executed") as caught:
        await posix.start(["./broken"])
    assert caught.value.transient is True


async def test_the_command_starts_with_default_signal_dispositions(posix):
    # This test process ignores SIGPIPE (Python does); the unit must not inherit that.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    handle = await posix.start(["sleep", "1000"])

    assert ignored_signals(handle.pid) == set()
    assert int(proc_status(handle.pid)["SigBlk"], 16) == 0


async def test_log_files_are_created_0640_with_their_directories_and_appended(posix):
    spec = posix.spec(["echo", "second"])
    launch = posix.launch(spec)
    launch = attrs.evolve(launch, stdout_path=posix.root / "new" / "dir" / "out.log")
    launch.stdout_path.parent.mkdir(parents=True)
    launch.stdout_path.write_text("first\n")
    os.chmod(launch.stdout_path, 0o600)
    old_umask = os.umask(0o022)
    try:
        handle = await posix.driver.start(launch)
    finally:
        os.umask(old_umask)
    await posix.driver.wait(handle)
    await posix.wait_until(lambda: launch.stdout_path.read_text() == "first\nsecond\n", what="appended output")

    assert stat.S_IMODE(launch.stderr_path.stat().st_mode) == 0o640


async def test_a_log_file_that_cannot_be_opened_is_a_start_error_and_nothing_starts(posix):
    launch = posix.launch(posix.spec(["sleep", "1000"]))
    launch.stderr_path.mkdir(parents=True)  # a directory where the file should be

    with pytest.raises(DriverError, match=f"cannot open log file {launch.stderr_path}: Is a directory"):
        await posix.driver.start(launch)
    assert not [pid for pid in children() if cmdline(pid) == ["sleep", "1000"]]


async def test_the_handle_survives_a_json_round_trip(posix):
    handle = await posix.start(["sleep", "1000"])
    restored = Handle.from_json(orjson.loads(orjson.dumps(handle.to_json())))

    observed = (await posix.new_driver().observe([restored]))["unit"]

    assert (observed.state, observed.pid) == (ProcessState.RUNNING, handle.pid)


# --- started directly (as by a daemon) ---------------------------------------------------------


async def test_a_direct_start_runs_the_command_itself_as_our_child_and_session_leader(direct):
    handle = await direct.start(["sleep", "1000"])

    fields = direct_stat(handle.pid)
    assert (fields["ppid"], fields["pgid"], fields["sid"]) == (os.getpid(), handle.pid, handle.pid)
    assert handle.data["shim_pid"] is None
    assert not (direct.state_dir / "run" / "unit").exists()  # nothing is written until it exits


async def test_a_direct_start_returns_once_proc_shows_its_argv_even_with_every_cpu_busy(direct):
    """posix_spawn returns a moment before the kernel publishes the new argv; the start waits for it.

    On busy CPUs that moment is not rare: without the wait, about one start in three is caught in it.
    """
    busy = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"]) for _ in os.sched_getaffinity(0)]
    try:
        for i in range(20):
            handle = await direct.start(["sleep", "1000", str(i)])
            assert cmdline(handle.pid) == ["sleep", "1000", str(i)]
    finally:
        for process in busy:
            process.kill()
            process.wait()


async def test_starts_launched_together_are_spawned_by_the_spawn_threads_and_each_gets_its_outcome(direct):
    """A burst goes through the spawn threads: every start gets its own child, or its own error."""
    names = [f"unit{i}" for i in range(6)]
    outcomes: dict[str, Handle | DriverError] = {}

    async def start(name: str) -> None:
        command = ["no-such-command-here"] if name == "unit3" else ["sleep", "1000"]
        try:
            outcomes[name] = await direct.start(command, name=name)
        except DriverError as exc:
            outcomes[name] = exc

    others = set(threading.enumerate())  # other tests' drivers may still have theirs
    async with anyio.create_task_group() as tasks:
        for name in names:
            tasks.start_soon(start, name)
    spawn_threads = [t for t in threading.enumerate() if t.name == "spawn" and t not in others]

    failed = outcomes.pop("unit3")
    assert isinstance(failed, DriverError) and not failed.transient and "command not found" in str(failed)
    pids = {handle.pid for handle in outcomes.values()}  # type: ignore[union-attr]
    assert len(pids) == 5
    for pid in pids:
        assert direct_stat(pid)["ppid"] == os.getpid()
        assert cmdline(pid) == ["sleep", "1000"]
    assert spawn_threads
    await direct.driver.aclose()
    assert not any(thread.is_alive() for thread in spawn_threads)


def direct_stat(pid: int) -> dict[str, int]:
    fields = process_stat(pid)
    return {"ppid": int(fields[1]), "pgid": int(fields[2]), "sid": int(fields[3])}


async def test_a_direct_start_runs_in_the_units_cwd_with_its_path_and_inherits_no_descriptor(direct):
    bin_dir = direct.work / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "where"
    tool.write_text("#!/bin/sh\npwd\nreadlink /proc/$$/fd/0\nls /proc/$$/fd\n")
    tool.chmod(0o755)
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        handle = await direct.start(["where"], env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    finally:
        os.close(leaked)
    await direct.driver.wait(handle)
    out = direct.state_dir / "logs" / "unit.out"
    await direct.wait_until(lambda: out.exists() and len(out.read_text().split()) >= 5, what="the output")

    lines = out.read_text().split()
    assert lines[:2] == [str(direct.work), os.devnull]
    assert set(lines[2:]) <= {"0", "1", "2", "10"}  # 10: dash's copy of the script it reads


FIND_PROGRAM = """
import sys
from reconciler.model import Spec
from reconciler_drivers import posix, _spawn
spec = lambda argv0: Spec(name="u", command=(argv0,), cwd="/", path="/u.toml")
by_path = _spawn.find_program(spec("/bin/true"), {})
before = "shutil" in sys.modules
by_name = _spawn.find_program(spec("true"), {b"PATH": b"/usr/bin:/bin"})
print(by_path, before, by_name, "shutil" in sys.modules)
"""


def test_shutil_is_imported_only_to_look_a_command_up_on_path():
    """With bz2 and lzma it is ~4 ms of every daemon's start-up, which a command given by path never needs."""
    argv = [sys.executable, "-c", FIND_PROGRAM]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    by_path, before, by_name, after = out.split()
    assert (by_path, before, after) == ("/bin/true", "False", "True")
    assert by_name in ("/usr/bin/true", "/bin/true")


@pytest.mark.parametrize(
    "command, cwd, message",
    [(["no-such-command-here"], None, "command not found"), (["true"], "/no/such/dir", "cwd: no such directory")],
)
async def test_a_missing_command_or_cwd_is_a_permanent_start_error(posix, command, cwd, message):
    with pytest.raises(DriverError, match=message) as caught:
        await posix.start(command, cwd=Path(cwd) if cwd else None)
    assert caught.value.transient is False


async def test_the_exit_keeper_writes_down_exits_while_no_driver_runs_and_is_restarted_if_killed(direct):
    first = await direct.start(direct.gate("exit 130"), name="first")
    keeper = first.data["keeper_pid"]
    os.kill(keeper, signal.SIGKILL)
    await direct.wait_until(lambda: not direct.alive(keeper), what="the keeper to die")
    second = await direct.start(["sleep", "1000"], name="second")  # a new keeper, told about both
    assert second.data["keeper_pid"] not in (None, keeper)
    await direct.driver.aclose()

    direct.release()
    os.kill(second.pid, signal.SIGKILL)
    for handle in (first, second):
        await reaped(direct, handle)  # reaped by this test's reaper: only the keeper's record is left
        await direct.wait_until(lambda: recorded_status(handle) is not None, what="the keeper's record")
    observed = await direct.new_driver().observe([first, second])

    assert (observed["first"].exit_code, observed["first"].exit_signal) == (130, None)
    assert (observed["second"].exit_code, observed["second"].exit_signal) == (None, signal.SIGKILL)


async def test_a_daemon_about_to_start_units_has_the_exit_keeper_up_before_the_first_start(direct):
    before = set(children())
    direct.driver.prepare_resident()
    (keeper,) = [pid for pid in set(children()) - before if "reconciler_drivers._keeper" in cmdline(pid)]
    direct.track(keeper)
    handle = await direct.start(["sleep", "1000"])
    assert handle.data["keeper_pid"] == keeper


async def test_preparing_never_fails_and_the_first_start_says_why_the_exit_keeper_cannot_run(direct):
    (direct.state_dir / "run" / "keeper.log").mkdir(parents=True)  # where its log goes: not a file it can open
    direct.driver.prepare_resident()
    with pytest.raises(DriverError, match="cannot open log file .*keeper.log: Is a directory"):
        await direct.start(["sleep", "1000"])


def channel_capacity(message: bytes) -> int:
    """How many such messages, each with a pidfd, a SOCK_SEQPACKET pair holds unread (its send buffer's worth)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pidfd = os.pidfd_open(os.getpid())
    ours.setblocking(False)
    count = 0
    try:
        while True:
            socket.send_fds(ours, [message], [pidfd])
            count += 1
    except BlockingIOError:
        return count
    finally:
        for fd in (ours, theirs):
            fd.close()
        os.close(pidfd)


async def test_a_keeper_that_does_not_read_holds_up_no_start_and_is_handed_every_unit_once_it_does(direct):
    first = await direct.start(["sleep", "1000"], name="u0")
    keeper = first.data["keeper_pid"]
    more = channel_capacity(_keeper.encode_request(first.data["token"], first.pid, 0, first.data["status_file"])) + 20
    if more > 1000:
        pytest.skip(f"the keeper's channel holds {more - 20} requests here: filling it takes too many processes")
    handles = [first]

    async def start(name: str) -> None:
        handles.append(await direct.start(["sleep", "1000"], name=name))

    os.kill(keeper, signal.SIGSTOP)  # it reads nothing: the channel fills up
    try:
        async with anyio.create_task_group() as tasks:
            for i in range(more):
                tasks.start_soon(start, f"u{i + 1}")
            # Every start but the one that waits for room in the channel is done: the event loop is free.
            await direct.wait_until(lambda: len(handles) == more, what="the starts")
            os.kill(keeper, signal.SIGCONT)
    finally:
        os.kill(keeper, signal.SIGCONT)
    await direct.driver.aclose()
    for handle in handles:
        os.kill(handle.pid, signal.SIGKILL)
    for handle in handles:
        await reaped(direct, handle)  # by this test's reaper: only the keeper's record is left
        await direct.wait_until(lambda: recorded_status(handle) is not None, what="the keeper's record")

    assert len(handles) == more + 1
    assert {handle.data["keeper_pid"] for handle in handles} == {keeper}


async def test_a_driver_that_takes_over_a_direct_unit_hands_it_to_its_own_keeper(direct):
    handle = await direct.start(["sleep", "1000"])
    os.kill(handle.data["keeper_pid"], signal.SIGKILL)  # the first daemon's keeper is gone too
    successor = direct.new_driver()
    await direct.driver.aclose()
    waiting = anyio.Event()

    async def watch() -> None:  # what the loop does for every unit it has adopted
        waiting.set()
        await successor.wait(handle)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        await waiting.wait()
        await successor.aclose()  # and now no driver runs at all
        os.kill(handle.pid, signal.SIGKILL)
    await reaped(direct, handle)
    await direct.wait_until(lambda: recorded_status(handle) is not None, what="the keeper's record")
    observed = (await direct.new_driver().observe([handle]))["unit"]

    assert observed.exit_signal == signal.SIGKILL


# --- identity and stopping -----------------------------------------------------------------


async def test_a_handle_from_before_a_reboot_is_never_running_nor_signalled(posix):
    handle = await posix.start(["sleep", "1000"])
    old_boot = attrs.evolve(handle, data={**handle.data, "boot_id": "00000000-0000-0000-0000-000000000000"})

    observed = (await posix.driver.observe([old_boot]))["unit"]

    assert observed.state is ProcessState.EXITED
    assert "rebooted" in observed.message
    assert posix.driver.signal(old_boot, signal.SIGKILL) is False
    await posix.driver.stop(old_boot, signal.SIGKILL, 0.2)
    assert posix.alive(handle.pid)


@pytest.mark.parametrize("begun", [False, True], ids=["stop", "begin_stop then stop"])
async def test_stop_wakes_a_stopped_process_so_it_can_act_on_the_signal(posix, begun):
    handle = await posix.start(["sleep", "1000"])
    os.kill(handle.pid, signal.SIGSTOP)
    await posix.wait_until(lambda: proc_status(handle.pid)["State"].startswith("T"), what="the unit to stop")

    sent = posix.driver.begin_stop(handle, signal.SIGTERM) if begun else False
    observed = await posix.driver.stop(handle, signal.SIGTERM, 10.0, signalled=sent)

    assert observed.exit_signal == signal.SIGTERM


async def test_evicted_pidfds_are_reopened_and_verified(posix):
    first = Identity.of(await posix.start(["sleep", "1000"], name="first"))
    second = Identity.of(await posix.start(["sleep", "1000"], name="second"))
    table = PidfdTable(capacity=1)
    try:
        fd_first = table.get(first.key)
        table.get(second.key)  # evicts and closes first's pidfd
        with pytest.raises(OSError):
            os.fstat(fd_first)
        assert table.get(first.key) is not None
        assert table.get((first.pid, first.start_ticks - 1)) is None
    finally:
        table.close_all()


async def test_the_pidfd_table_reports_exits_and_never_a_live_process_after_evictions(posix):
    def key(pid: int) -> tuple[int, int]:
        return (pid, posix.start_ticks(pid))

    table = PidfdTable(capacity=1)
    try:
        doomed = posix.spawn_unrelated(["sleep", "1000"])
        fd = table.get(key(doomed))
        assert table.exited([fd]) == set()
        os.kill(doomed, signal.SIGKILL)
        await posix.wait_until(lambda: table.exited([fd]) == {fd}, what="the exit to show")

        # Evictions close fds whose numbers new pidfds may take, while a waiter may still hold a
        # duplicate of the old one: no stale exit may show under those numbers.
        held = os.dup(fd)
        try:
            for _ in range(3):
                alive = table.get(key(posix.spawn_unrelated(["sleep", "1000"])))
                assert table.exited([alive]) == set()
        finally:
            os.close(held)
    finally:
        table.close_all()


def kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


@pytest.mark.skipif(not kernel_at_least(6, 15), reason="a reaped process's exit status needs PIDFD_GET_INFO")
async def test_a_handle_looked_at_twice_keeps_the_exact_exit_even_if_it_ends_unwatched(posix):
    handle = await posix.start(["sleep", "1000"])
    driver = posix.new_driver()
    for _ in range(2):
        assert (await driver.observe([handle]))["unit"].state is ProcessState.RUNNING

    os.kill(handle.pid, signal.SIGKILL)
    await reaped(posix, handle)  # /proc no longer knows how it ended
    observed = (await driver.observe([handle]))["unit"]

    assert (observed.exit_code, observed.exit_signal) == (None, signal.SIGKILL)


@pytest.mark.skipif(not os.geteuid() == 0, reason="a zombie's exit status is shown to root only")
async def test_a_fresh_driver_reports_an_unreaped_process_as_exited_with_its_signal(shim):
    handle = await shim.start(["sleep", "1000"])
    shim_pid = handle.data["shim_pid"]
    os.kill(shim_pid, signal.SIGSTOP)  # a stopped shim cannot reap: the unit stays a zombie
    try:
        await shim.wait_until(lambda: proc_status(shim_pid)["State"].startswith("T"), what="the shim to stop")
        os.kill(handle.pid, signal.SIGKILL)
        await shim.wait_until(lambda: not shim.alive(handle.pid), what="the unit to die")

        observed = (await shim.new_driver().observe([handle]))["unit"]
    finally:
        os.kill(shim_pid, signal.SIGCONT)

    assert (observed.state, observed.exit_signal) == (ProcessState.EXITED, signal.SIGKILL)


async def test_a_group_is_signalled_only_while_its_leader_or_the_main_process_is_in_it(shim):
    script = "import os, signal; os.setpgid(0, 0); open('left', 'w').close(); signal.pause()"
    handle = await shim.start([sys.executable, "-c", script])
    await shim.wait_until((shim.work / "left").exists, what="the unit to leave its group")
    ident = Identity.of(handle)
    main, shim_fd = (os.pidfd_open(pid) for pid in (ident.pid, ident.shim_pid))
    try:
        assert UnitGroup(ident.pgid, ident.pid, main, shim_fd).ours()
        os.kill(ident.shim_pid, signal.SIGKILL)
        await shim.wait_until(lambda: not shim.alive(ident.shim_pid), what="the shim to die")

        assert not UnitGroup(ident.pgid, ident.pid, main, shim_fd).ours()
    finally:
        os.close(main)
        os.close(shim_fd)
    observed = await shim.driver.stop(handle, signal.SIGTERM, 10.0)  # the main process still gets it
    assert observed.exit_signal == signal.SIGTERM


async def start_under_lying_shim(h, monkeypatch, report: str) -> int:
    """Start a unit under a fake shim that reports `report` then sleeps; returns the fake shim's pid."""
    fake = h.root / "lying-shim.sh"
    fake.write_text('echo $$ > "$3/shim.pid"; exec 3>&0; echo "$REPORT" >&3; exec sleep 1000\n')
    monkeypatch.setattr(_spawn, "SHIM", str(fake))
    try:
        await h.start(["sleep", "1000"], env={"REPORT": report})
    finally:
        shim = int((h.work / "shim.pid").read_text())
        h.track(shim)
    return shim


async def test_a_reported_process_outside_the_units_session_is_refused_and_the_shim_killed(shim, monkeypatch):
    stranger = shim.spawn_unrelated(["sleep", "1000"])

    with pytest.raises(DriverError, match="not in the unit's session"):
        await start_under_lying_shim(shim, monkeypatch, f"{stranger} {shim.start_ticks(stranger)}")

    shim_pid = int((shim.work / "shim.pid").read_text())
    await shim.wait_until(lambda: not shim.alive(shim_pid), what="the lying shim to be killed")
    assert shim.alive(stranger)


@pytest.mark.parametrize("report", ["hello", "0 12", "12", "-3 4"])
async def test_a_garbled_report_is_a_start_error_and_the_shim_killed(shim, monkeypatch, report):
    with pytest.raises(DriverError, match="report is not"):
        await start_under_lying_shim(shim, monkeypatch, report)

    shim_pid = int((shim.work / "shim.pid").read_text())
    await shim.wait_until(lambda: not shim.alive(shim_pid), what="the lying shim to be killed")


# --- user and group ---------------------------------------------------------------------------


@pytest.fixture
def open_state_dir():
    """A state directory the unit's user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="reconciler-shim-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
async def test_a_user_unit_runs_with_that_users_ids_and_its_shim_still_records(shim, open_state_dir):
    nobody = pwd.getpwnam("nobody")
    driver = PosixDriver(open_state_dir)
    shim.drivers.append(driver)
    script = "while [ ! -e release ]; do sleep 0.01; done; exit 7"
    spec = shim.spec(["/bin/sh", "-c", script], cwd=open_state_dir, user="nobody", env={"SHELL": "/bin/dash"})
    handle = await driver.start(shim.launch(spec))
    shim.track(handle.pid)

    status = proc_status(handle.pid)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert set(status["Groups"].split()) <= set(map(str, os.getgrouplist("nobody", nobody.pw_gid)))
    assert ignored_signals(handle.pid) == set()
    # The user's own login variables, as systemd's User= sets them; the spec's env still wins.
    with open(f"/proc/{handle.pid}/environ", "rb") as f:
        environ = dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if item)
    assert (environ["HOME"], environ["USER"], environ["LOGNAME"]) == (nobody.pw_dir, "nobody", "nobody")
    assert environ["SHELL"] == "/bin/dash"

    (open_state_dir / "release").touch()
    await driver.wait(handle)
    assert await shim_record(shim, handle) == "7"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing group needs root")
async def test_a_group_alone_changes_the_gid_and_drops_supplementary_groups(shim):
    nogroup = grp.getgrnam("nogroup")
    handle = await shim.start(["sleep", "1000"], group="nogroup")

    status = proc_status(handle.pid)
    assert status["Uid"].split() == ["0"] * 4
    assert status["Gid"].split() == [str(nogroup.gr_gid)] * 4
    assert status["Groups"].split() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
async def test_an_unknown_user_or_group_is_a_permanent_error(shim):
    for fields, what in [({"user": "no-such-user-here"}, "user"), ({"group": "no-such-group-here"}, "group")]:
        with pytest.raises(DriverError, match=f"unknown {what}") as caught:
            await shim.start(["sleep", "1000"], **fields)
        assert caught.value.transient is False
