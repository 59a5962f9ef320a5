"""The built-in posix driver: every unit runs under a small sh shim in its own session.

The shim (shim.sh) is the session and process-group leader; the unit's command
is its foreground child. The driver knows a unit's process by pid + start ticks
+ boot id and holds a verified pidfd on it, so a recycled pid is never signalled
and never reported running. Exit facts come, most exact first, from the kernel
(PIDFD_GET_INFO after the shim reaped the child; /proc/PID/stat of a zombie),
then from the status file the shim writes, which outlives the reconciler.
A random token names each start, so a record is never taken for another's.
"""

from __future__ import annotations

import collections
import os
import resource
import sys
import time
from pathlib import Path
from signal import SIGCONT, SIGKILL, pidfd_send_signal
from typing import Iterable, Mapping

import anyio
import attrs

from reconciler.driver import Driver, Launch
from reconciler.errors import DriverError
from reconciler.model import Handle, Observation, ProcessState

from . import _linux, _spawn

START_TIMEOUT = 10.0  # the shim must report the command's pid and the exec must be seen by then
SHIM_RECORD_WAIT = 2.0  # per observe/stop call: how long to wait for exiting shims to write their record
KILL_WAIT = 5.0  # after SIGKILL, how long stop waits for the group to vanish
EXIT_MEMORY = 4096  # exit facts of this many dead processes are kept, so answers stay exact
EXEC_FAILED = (126, 127)  # how sh reports that `exec` failed

REBOOTED = "the machine rebooted since the unit started; its exit was not recorded"
UNRECORDED = "exited while unobserved; no status was recorded"


@attrs.frozen
class Identity:
    """Enough to recognise a unit's processes again, and nothing else."""

    pid: int
    start_ticks: int
    boot_id: str
    shim_pid: int
    shim_start_ticks: int
    pgid: int
    status_file: str
    token: str | None  # None for handles from before tokens: their shim records "PID START_TICKS STATUS"

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)

    @classmethod
    def of(cls, handle: Handle) -> Identity | None:
        """The identity a posix handle carries; None for a handle without one."""
        data = handle.data
        try:
            return cls(
                pid=int(handle.pid),  # type: ignore[arg-type]
                start_ticks=int(data["start_ticks"]),
                boot_id=str(data["boot_id"]),
                shim_pid=int(data["shim_pid"]),
                shim_start_ticks=int(data["shim_start_ticks"]),
                pgid=int(data["pgid"]),
                status_file=str(data["status_file"]),
                token=None if data.get("token") is None else str(data["token"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


@attrs.frozen
class ShimRecord:
    """What the shim wrote about the start the handle names: sh's $? for the command, and when."""

    status: int
    written_at: float


def read_shim_record(ident: Identity) -> ShimRecord | None:
    """The shim's record of exactly this start; a file left by another start is ignored."""
    try:
        with open(ident.status_file, "rb") as f:
            text = f.read()
            written_at = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    *key, status = text.split() or [b""]
    if not status.isdigit():
        return None
    if ident.token is not None:
        expected = [ident.token.encode()]
    else:
        expected = [str(ident.pid).encode(), str(ident.start_ticks).encode()]
    return ShimRecord(int(status), written_at) if key == expected else None


def exit_facts(wait_status: int | None, record: ShimRecord | None) -> tuple[int | None, int | None, str]:
    """(exit_code, exit_signal, message) from the best source available; never a guess."""
    if wait_status is not None:
        if os.WIFSIGNALED(wait_status):
            return None, os.WTERMSIG(wait_status), ""
        return os.WEXITSTATUS(wait_status), None, ""
    if record is None:
        return None, None, UNRECORDED
    if record.status <= 128:
        return record.status, None, ""
    return (
        None,
        None,
        f"exit status {record.status}: killed by signal {record.status - 128} or exited with code "
        f"{record.status}; the shim's record cannot tell which",
    )


class PidfdTable:
    """Verified pidfds on units' main processes, least recently used closed first.

    A pidfd is the kernel's handle on one exact process: polling it asks the OS,
    it caches nothing. The bound keeps a thousand units within the fd limit.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._fds: collections.OrderedDict[tuple[int, int], int] = collections.OrderedDict()

    def get(self, ident: Identity) -> int | None:
        """The pidfd of the handle's process, opened and verified if need be; None if it is gone."""
        fd = self.peek(ident.key)
        if fd is None:
            fd = _linux.open_verified_pidfd(ident.pid, ident.start_ticks)
            if fd is not None:
                self.put(ident.key, fd)
        return fd

    def peek(self, key: tuple[int, int]) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def put(self, key: tuple[int, int], fd: int) -> None:
        self.discard(key)
        self._fds[key] = fd
        while len(self._fds) > self._capacity:
            _, old = self._fds.popitem(last=False)
            os.close(old)

    def discard(self, key: tuple[int, int]) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


def _pidfd_capacity() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 64 if soft == resource.RLIM_INFINITY else max(64, soft // 2)


class PosixDriver(Driver):
    """Runs units as plain processes of this machine (Linux: pidfds and /proc)."""

    name = "posix"

    def __init__(self, state_dir: Path) -> None:
        super().__init__(Path(state_dir))
        self._pidfds = PidfdTable(_pidfd_capacity())
        # Exit facts of dead processes, so a later observe stays as exact as the first.
        self._exits: collections.OrderedDict[tuple[int, int], Observation] = collections.OrderedDict()
        # When this driver first saw a process's pidfd readable (its exit time if no record says better).
        self._exit_seen: dict[tuple[int, int], float] = {}

    @classmethod
    def available(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return "needs Linux (pidfd and /proc)"
        if not os.access(_spawn.SHELL, os.X_OK):
            return f"{_spawn.SHELL} is missing"
        return None

    # --- start ---------------------------------------------------------------

    async def start(self, launch: Launch) -> Handle:
        spec = launch.spec
        env = _spawn.unit_environment(spec)
        _spawn.check_cwd(spec)
        _spawn.check_command(spec, env)
        ids = _spawn.resolve_ids(spec)
        status_file = _spawn.prepare_status_file(self.state_dir, spec.name, ids)
        token = os.urandom(8).hex()
        shim = _spawn.spawn_shim(launch, _spawn.shim_argv(status_file, token, spec), env, ids)
        try:
            with anyio.move_on_after(START_TIMEOUT) as timer:
                ident, confirmed = await self._confirm_start(shim, status_file, token, launch)
            if timer.cancelled_caught:
                if not _linux.exited([shim.pidfd]):
                    UnitGroup(shim.pid, None, shim.pidfd).send(SIGKILL)
                raise DriverError(f"{spec.command[0]}: not started within {START_TIMEOUT:g}s; the shim was killed")
        finally:
            shim.close()
        handle = Handle(
            driver=self.name,
            unit=spec.name,
            spec_hash=spec.process_hash,
            pid=ident.pid,
            started_at=_linux.start_time(ident.start_ticks),
            data=attrs.asdict(ident),
        )
        if not confirmed:
            # Gone before its exec was seen: sh's exec failure codes mean it never ran.
            self._exit_seen.setdefault(ident.key, time.time())
            observation = await self._exit_observation(ident, anyio.current_time() + SHIM_RECORD_WAIT)
            if observation.exit_code in EXEC_FAILED:
                raise DriverError(
                    f"{spec.command[0]}: could not be executed (exit status {observation.exit_code}; "
                    f"see {launch.stderr_path})"
                )
        return handle

    async def _confirm_start(
        self, shim: _spawn.Spawned, status_file: Path, token: str, launch: Launch
    ) -> tuple[Identity, bool]:
        """Read the command's pid from the shim, pin it with a pidfd, wait for its exec.

        Returns its identity and whether the exec was seen (False: it was already gone).
        """
        report = await _read_report(shim.report_fd)
        if report is None:
            raise DriverError(f"the shim exited before starting the command (see {launch.stderr_path})")
        pid, start_ticks = report
        ident = Identity(
            pid=pid,
            start_ticks=start_ticks,
            boot_id=_linux.boot_id(),
            shim_pid=shim.pid,
            shim_start_ticks=shim.start_ticks,
            pgid=shim.pid,
            status_file=str(status_file),
            token=token,
        )
        pidfd = self._pidfds.get(ident)
        if pidfd is None:
            return ident, False
        shim_cmdline = b"".join(os.fsencode(arg) + b"\0" for arg in shim.argv)
        return ident, await _exec_seen(pidfd, pid, shim_cmdline)

    # --- observe and wait -------------------------------------------------------

    async def observe(self, handles: Iterable[Handle]) -> Mapping[str, Observation]:
        result: dict[str, Observation] = {}
        candidates: list[tuple[Handle, Identity, int]] = []
        ended: list[tuple[Handle, Identity]] = []
        for handle in handles:
            ident = Identity.of(handle)
            if handle.pid is None:
                result[handle.unit] = Observation(ProcessState.GONE)
            elif ident is None:
                result[handle.unit] = Observation(ProcessState.UNKNOWN, message="not a posix handle")
            elif (settled := self._settled(ident)) is not None:
                result[handle.unit] = settled
            elif (pidfd := self._pidfds.get(ident)) is None:
                ended.append((handle, ident))
            else:
                candidates.append((handle, ident, pidfd))
        done = _linux.exited([pidfd for _, _, pidfd in candidates])
        now = time.time()
        for handle, ident, pidfd in candidates:
            if pidfd in done:
                self._exit_seen.setdefault(ident.key, now)
                ended.append((handle, ident))
            else:
                started_at = _linux.start_time(ident.start_ticks)
                result[handle.unit] = Observation(ProcessState.RUNNING, pid=ident.pid, started_at=started_at)
        deadline = anyio.current_time() + SHIM_RECORD_WAIT
        for handle, ident in ended:
            result[handle.unit] = await self._exit_observation(ident, deadline)
        return result

    async def wait(self, handle: Handle) -> None:
        ident = Identity.of(handle)
        if ident is None or self._settled(ident) is not None:
            return
        pidfd = self._pidfds.get(ident)
        if pidfd is None:
            return
        own = os.dup(pidfd)  # one waiter per fd in the event loop: each waiter gets its own
        try:
            await anyio.wait_readable(own)
        finally:
            os.close(own)
        self._exit_seen.setdefault(ident.key, time.time())

    def _settled(self, ident: Identity) -> Observation | None:
        """The observation that needs no look at the process: after a reboot, or a known exit."""
        if ident.boot_id != _linux.boot_id():
            return Observation(ProcessState.EXITED, pid=ident.pid, message=REBOOTED)
        return self._exits.get(ident.key)

    async def _exit_observation(self, ident: Identity, deadline: float) -> Observation:
        """EXITED with the exit facts of a process known to be dead (or gone from our view)."""
        wait_status, record = self._exit_sources(ident)
        if wait_status is None and record is None:
            await self._await_shim(ident, deadline)
            wait_status, record = self._exit_sources(ident)
        code, sig, message = exit_facts(wait_status, record)
        observation = Observation(
            ProcessState.EXITED,
            pid=ident.pid,
            started_at=_linux.start_time(ident.start_ticks),
            exited_at=record.written_at if record is not None else self._exit_seen.get(ident.key),
            exit_code=code,
            exit_signal=sig,
            message=message,
        )
        # Final once the shim has recorded (or never will): later answers must not get less exact.
        if record is not None or not self._shim_alive(ident):
            self._remember_exit(ident.key, observation)
        return observation

    def _exit_sources(self, ident: Identity) -> tuple[int | None, ShimRecord | None]:
        """The kernel's exact wait status if it still has it, and the shim's record."""
        wait_status = None
        pidfd = self._pidfds.peek(ident.key)
        if pidfd is not None:
            wait_status = _linux.pidfd_exit_status(pidfd)
        if wait_status is None and _linux.can_read_exit_status():
            stat = _linux.read_stat(ident.pid)
            if stat is not None and stat.start_ticks == ident.start_ticks and stat.zombie:
                wait_status = stat.exit_status
        return wait_status, read_shim_record(ident)

    def _remember_exit(self, key: tuple[int, int], observation: Observation) -> None:
        self._pidfds.discard(key)
        self._exit_seen.pop(key, None)
        self._exits[key] = observation
        while len(self._exits) > EXIT_MEMORY:
            self._exits.popitem(last=False)

    def _shim_alive(self, ident: Identity) -> bool:
        pidfd = _linux.open_verified_pidfd(ident.shim_pid, ident.shim_start_ticks)
        if pidfd is None:
            return False
        try:
            return not _linux.exited([pidfd])
        finally:
            os.close(pidfd)

    async def _await_shim(self, ident: Identity, deadline: float) -> None:
        """Return once the unit's shim is gone (so its record, if any, is written), or at `deadline`."""
        pidfd = _linux.open_verified_pidfd(ident.shim_pid, ident.shim_start_ticks)
        if pidfd is None:
            return
        try:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)

    # --- stop and signal -------------------------------------------------------

    async def stop(self, handle: Handle, signal: int, timeout: float) -> Observation:
        ident = Identity.of(handle)
        if ident is not None and self._settled(ident) is None:
            group = UnitGroup.open(ident, self._pidfds.get(ident))
            try:
                # The group is ours while a verified member lives: the main process or the shim.
                if group.alive():
                    await group.terminate(signal, timeout)
                if group.main_exited():
                    self._exit_seen.setdefault(ident.key, time.time())
            finally:
                group.close()
        return (await self.observe([handle]))[handle.unit]

    def signal(self, handle: Handle, signal: int) -> bool:
        ident = Identity.of(handle)
        if ident is None or self._settled(ident) is not None:
            return False
        pidfd = self._pidfds.get(ident)
        if pidfd is None or _linux.exited([pidfd]):
            return False
        try:
            pidfd_send_signal(pidfd, signal)
        except ProcessLookupError:
            return False
        return True

    async def aclose(self) -> None:
        self._pidfds.close_all()


async def _read_report(fd: int) -> tuple[int, int] | None:
    """The "PID START_TICKS" line the shim writes before the exec; None if it ended first."""
    data = b""
    while not data.endswith(b"\n"):
        await anyio.wait_readable(fd)
        chunk = os.read(fd, 64)
        if not chunk:
            return None
        data += chunk
    pid, start_ticks = data.split()
    return int(pid), int(start_ticks)


async def _exec_seen(pidfd: int, pid: int, shim_cmdline: bytes) -> bool:
    """Wait until the process no longer runs the shim's code (its exec happened).

    There is no event for an exec: /proc/PID/cmdline is polled at short, growing
    intervals, while an exit wakes the wait at once. False if it exited first.
    """
    own = os.dup(pidfd)
    try:
        delay = 0.0005
        while True:
            cmdline = _linux.read_cmdline(pid)
            if _linux.exited([own]):
                return False
            # Empty: the process is exiting (its memory is gone before its pidfd turns readable).
            if cmdline and cmdline != shim_cmdline:
                return True
            with anyio.move_on_after(delay):
                await anyio.wait_readable(own)
            delay = min(delay * 2, 0.02)
    finally:
        os.close(own)


class UnitGroup:
    """A unit's process group, pinned by pidfds on its verified main process and shim.

    Each pidfd here is this object's own, so waiting on it never competes with
    another waiter in the event loop.
    """

    def __init__(self, pgid: int, main: int | None, shim: int | None) -> None:
        self.pgid = pgid
        self._main = main
        self._shim = shim

    @classmethod
    def open(cls, ident: Identity, main_pidfd: int | None) -> UnitGroup:
        main = None if main_pidfd is None else os.dup(main_pidfd)
        return cls(ident.pgid, main, _linux.open_verified_pidfd(ident.shim_pid, ident.shim_start_ticks))

    def close(self) -> None:
        for fd in (self._main, self._shim):
            if fd is not None:
                os.close(fd)

    def alive(self) -> bool:
        members = [fd for fd in (self._main, self._shim) if fd is not None]
        return len(_linux.exited(members)) < len(members)

    def main_exited(self) -> bool:
        return self._main is not None and bool(_linux.exited([self._main]))

    async def terminate(self, sig: int, timeout: float) -> None:
        """Signal the group, wait for it to end, then SIGKILL whatever is left."""
        with anyio.move_on_after(timeout):
            self.send(sig)
            await self.gone()
            return
        self.send(SIGKILL)
        with anyio.move_on_after(KILL_WAIT):
            await self.gone()

    def send(self, sig: int) -> None:
        """`sig` to the main process (by pidfd: it may have left the group) and to the group.

        A stopped process cannot act on a signal: SIGCONT follows, as systemd does.
        """
        for signum in (sig, SIGCONT) if sig not in (SIGKILL, SIGCONT) else (sig,):
            if self._main is not None:
                try:
                    pidfd_send_signal(self._main, signum)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(self.pgid, signum)
            except ProcessLookupError:
                pass

    async def gone(self) -> None:
        """Wait for the main process and the shim to exit (events), then for the group to empty.

        A process group has no exit event: it is checked at growing intervals,
        first with one cheap kill(0), then (zombies may linger) by reading /proc.
        """
        for fd in (self._main, self._shim):
            if fd is not None:
                await anyio.wait_readable(fd)
        delay = 0.001
        while _linux.group_exists(self.pgid):
            if delay >= 0.016 and not _linux.group_alive(self.pgid):
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)
