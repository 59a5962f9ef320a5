"""The built-in posix driver: every unit runs in its own session, directly or under a shim.

Started by a resident daemon, a unit's command is spawned directly: it is the
session and group leader, the daemon (its parent, a subreaper) reaps it, and the
kernel keeps its exit status for our pidfd (PIDFD_GET_INFO); one exit keeper
process (_keeper.py) holds a pidfd on every such unit too and writes its exit
down, so an exit while no daemon runs is still known. Started by `--once`,
which exits at once, a small sh shim (shim.sh) leads the session instead and
runs the command as its foreground child.

The driver knows a unit's process by pid + start ticks
+ boot id and holds a verified pidfd on it, so a recycled pid is never signalled
and never reported running. Exit facts come, most exact first, from the kernel
(PIDFD_GET_INFO after the shim reaped the child; /proc/PID/stat of a zombie),
then from the status file the shim writes, which outlives the reconciler.
A random token names each start, so a record is never taken for another's.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import sys
import time
import weakref
from pathlib import Path
from signal import SIGKILL, pidfd_send_signal
from typing import Callable, Iterable, Mapping

import anyio
import anyio.lowlevel
import attrs

from reconciler.driver import Driver, Launch, process_start_time
from reconciler.errors import DriverError
from reconciler.model import Handle, Observation, ProcessState

from . import _linux, _spawn
from ._group import UnitGroup
from ._keeper_client import KeeperClient
from ._pidfds import PidfdTable, default_capacity
from ._spawn_threads import SpawnThreads

START_TIMEOUT = 10.0  # the shim must report the command's pid and the exec must be seen by then
SHIM_RECORD_WAIT = 2.0  # per observe/stop call: how long to wait for exiting shims to write their record
KEEPER_RECORD_WAIT = 0.5  # how long the exit keeper may take to write down an exit it saw
EXIT_MEMORY = 4096  # exit facts of this many dead processes are kept, so answers stay exact
EXEC_FAILED = (126, 127)  # how sh reports that `exec` failed
SPAWN_THREADS = 2  # threads spawning direct starts: one spawns while the other waits for its exec

REBOOTED = "the machine rebooted since the unit started; its exit was not recorded"
UNRECORDED = "exited while unobserved; no status was recorded"


@attrs.frozen
class Identity:
    """Enough to recognise a unit's processes again, and nothing else."""

    pid: int
    start_ticks: int
    boot_id: str
    shim_pid: int | None  # None: started directly (the exit keeper writes its record)
    shim_start_ticks: int | None
    pgid: int
    status_file: str | None
    token: str | None  # None for handles from before tokens: their shim records "PID START_TICKS STATUS"
    keeper_pid: int | None = None  # started directly: the exit keeper that writes its record
    keeper_start_ticks: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)

    @property
    def shim_key(self) -> tuple[int, int] | None:
        if self.shim_pid is None or self.shim_start_ticks is None:
            return None
        return (self.shim_pid, self.shim_start_ticks)

    @property
    def record_key(self) -> tuple[bytes, ...]:
        """What the shim's record of this start begins with."""
        if self.token is not None:
            return (self.token.encode(),)
        return (str(self.pid).encode(), str(self.start_ticks).encode())

    @classmethod
    def of(cls, handle: Handle) -> Identity | None:
        """The identity a posix handle carries; None for a handle without one."""
        data = handle.data
        try:
            return cls(
                pid=int(handle.pid),  # type: ignore[arg-type]
                start_ticks=int(data["start_ticks"]),
                boot_id=str(data["boot_id"]),
                shim_pid=_optional(int, data["shim_pid"]),
                shim_start_ticks=_optional(int, data["shim_start_ticks"]),
                pgid=int(data["pgid"]),
                status_file=_optional(str, data["status_file"]),
                token=None if data.get("token") is None else str(data["token"]),
                keeper_pid=_optional(int, data.get("keeper_pid")),
                keeper_start_ticks=_optional(int, data.get("keeper_start_ticks")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _optional(convert, value):
    return None if value is None else convert(value)


@attrs.frozen
class ShimRecord:
    """What the shim wrote about the start the handle names: sh's $? for the command, and when."""

    status: int
    written_at: float | None  # None when a later record was appended after it: its own time is lost
    exact: bool = False  # a wait status from the exit keeper, not the shim's $?


RECORD_TAIL = 16384  # how much of the end of a status file is searched for a record


def read_shim_record(ident: Identity) -> ShimRecord | None:
    """The shim's record of exactly this start; the records of other starts in the file are ignored."""
    if ident.status_file is None:
        return None
    try:
        fd = os.open(ident.status_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        offset = max(0, st.st_size - RECORD_TAIL)
        text = os.pread(fd, RECORD_TAIL, offset)
    finally:
        os.close(fd)
    if offset:
        text = text[text.find(b"\n") + 1 :]  # the first line was cut
    found = find_record(text, ident.record_key)
    if found is None:
        return None
    status, exact, last = found
    return ShimRecord(status, st.st_mtime if last else None, exact)


def find_record(text: bytes, key: tuple[bytes, ...]) -> tuple[int, bool, bool] | None:
    """From the latest complete line "KEY... STATUS" of `text`: the status, whether it is exact, and
    whether that line is the last.

    STATUS is sh's $? from a shim, or "w" and the wait status from the exit keeper.
    Records are appended; a line without its newline is still being written.
    """
    lines = text.split(b"\n")[:-1]
    for index in range(len(lines) - 1, -1, -1):
        *fields, status = lines[index].split() or [b""]
        exact = status.startswith(b"w")
        if exact:
            status = status[1:]
        if tuple(fields) == key and status.isdigit():
            return int(status), exact, index == len(lines) - 1
    return None


def exit_facts(wait_status: int | None, record: ShimRecord | None) -> tuple[int | None, int | None, str]:
    """(exit_code, exit_signal, message) from the best source available; never a guess."""
    if wait_status is None and record is not None and record.exact:
        wait_status = record.status
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


class _Known:
    """What one handle object says, parsed once, and what has been learnt about it.

    A plain slotted class: an attrs class would add its creation to every short-lived process.
    """

    __slots__ = ("handle", "ident", "running", "revisited")

    def __init__(self, handle: weakref.ref[Handle], ident: Identity | None, running: Observation | None) -> None:
        self.handle = handle
        self.ident = ident
        self.running = running  # the answer while its process lives (a value: the same every time)
        self.revisited = False  # asked about again: worth a pidfd, which makes later looks a poll


class KnownHandles:
    """The parsed identity of every live handle object, keyed by the object.

    The core hands the same frozen Handle objects pass after pass; parsing each
    once keeps a steady-state observe of a thousand units to a poll and a loop.
    An entry goes with its handle (a weak reference), so the map never outgrows
    the handles in use.
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Known] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, handle: Handle) -> _Known:
        known = self._entries.get(id(handle))
        if known is not None and known.handle() is handle:
            known.revisited = True
            return known
        ident = Identity.of(handle)
        running = None
        if ident is not None:
            started_at = process_start_time(ident.start_ticks)
            running = Observation(ProcessState.RUNNING, pid=ident.pid, started_at=started_at)
        ref = weakref.ref(handle, functools.partial(self._forget, id(handle)))
        known = self._entries[id(handle)] = _Known(ref, ident, running)
        return known

    def _forget(self, key: int, ref: weakref.ref[Handle]) -> None:
        known = self._entries.get(key)
        if known is not None and known.handle is ref:  # the id may already name a newer handle
            del self._entries[key]


class PosixDriver(Driver):
    """Runs units as plain processes of this machine (Linux: pidfds and /proc)."""

    name = "posix"

    def __init__(self, state_dir: Path) -> None:
        super().__init__(Path(state_dir))
        self._pidfds = PidfdTable(default_capacity())
        self._known = KnownHandles()
        # Exit facts of dead processes, so a later observe stays as exact as the first.
        self._exits: collections.OrderedDict[tuple[int, int], Observation] = collections.OrderedDict()
        # When this driver first saw a process's pidfd readable (its exit time if no record says better).
        self._exit_seen: dict[tuple[int, int], float] = {}
        # Units started directly that the exit keeper watches for us (handed over again if it is restarted).
        self._keeper = KeeperClient(self.state_dir / "run" / "keeper.log")
        self._kept: dict[tuple[int, int], Identity] = {}
        self._spawn_threads = SpawnThreads(SPAWN_THREADS)
        self._starting = 0  # direct starts under way

    @classmethod
    def available(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return "needs Linux (pidfd and /proc)"
        if not os.access(_spawn.SHELL, os.X_OK):
            return f"{_spawn.SHELL} is missing"
        return None

    # --- start ---------------------------------------------------------------

    def prepare_resident(self) -> None:
        """Start the exit keeper now: its interpreter starts up (~30 ms of CPU) beside the
        first pass's reading of the specs, not amid the starts that follow."""
        if _spawn.direct_available():
            try:
                self._ensure_keeper()
            except DriverError:
                pass  # the first direct start tries again, and reports why it cannot

    async def start(self, launch: Launch) -> Handle:
        spec = launch.spec
        ids = _spawn.resolve_ids(spec)
        if launch.resident and ids is None and _spawn.direct_available():
            # The keeper first: one that cannot start fails the start before a child exists.
            keeper = self._ensure_keeper()
            ident = self._start_direct(launch, await self._spawn(launch), keeper)
            await self._keeper.drain()
        else:
            ident = await self._start_under_shim(launch, _spawn.unit_environment(spec, ids), ids)
        return Handle(
            driver=self.name,
            unit=spec.name,
            spec_hash=spec.process_hash,
            pid=ident.pid,
            started_at=process_start_time(ident.start_ticks),
            data=attrs.asdict(ident),
        )

    async def _spawn(self, launch: Launch) -> _spawn.Direct:
        """Spawn a direct start: at once if it is alone, else from one of the spawn threads.

        A spawn mostly waits for its child to exec: in a burst of starts, one thread
        spawns while the other waits and the event loop does its part, while a lone
        start (a restart) is spared the hand-off. Starts launched together all reach
        the checkpoint before any goes past it.
        """
        self._starting += 1
        try:
            await anyio.lowlevel.checkpoint()
            if self._starting == 1:
                return _spawn.spawn_direct(launch)
            return await self._spawn_threads.run(_spawn.spawn_direct, launch)
        finally:
            self._starting -= 1

    def _start_direct(self, launch: Launch, child: _spawn.Direct, keeper: tuple[int, int]) -> Identity:
        """The command as our own child, spawned and exec'd: its pidfd kept, the exit keeper told."""
        self._pidfds.put((child.pid, child.start_ticks), child.pidfd)
        keeper_pid, keeper_ticks = keeper
        ident = Identity(
            pid=child.pid,
            start_ticks=child.start_ticks,
            boot_id=_linux.boot_id(),
            shim_pid=None,
            shim_start_ticks=None,
            pgid=child.pid,
            status_file=str(_spawn.status_file(self.state_dir, launch.spec.name)),
            token=_new_token(),
            keeper_pid=keeper_pid,
            keeper_start_ticks=keeper_ticks,
        )
        self._keep(ident, child.pidfd)
        return ident

    def _ensure_keeper(self) -> tuple[int, int]:
        """The running exit keeper's identity; a keeper started afresh is handed every unit we keep."""
        if not self._keeper.ensure():
            for key, kept in list(self._kept.items()):
                fd = self._pidfds.get(key)
                if fd is None:
                    del self._kept[key]
                else:
                    self._keep(kept, fd)
        assert self._keeper.identity is not None
        return self._keeper.identity

    def _keep(self, ident: Identity, pidfd: int) -> None:
        """Have the exit keeper watch a unit started directly (by us, or by a daemon before us)."""
        self._keeper.watch(ident.token, ident.pid, ident.start_ticks, ident.status_file, pidfd)  # type: ignore[arg-type]
        self._kept[ident.key] = ident

    async def _start_under_shim(self, launch: Launch, env: dict[bytes, bytes], ids: _spawn.Ids | None) -> Identity:
        """The command as the shim's child, for units that outlive the reconciler or change ids."""
        spec = launch.spec
        status_file = _spawn.prepare_status_file(self.state_dir, spec.name, ids)
        token = _new_token()
        shim = _spawn.spawn_shim(launch, _spawn.shim_argv(status_file, token, spec), env, ids)
        try:
            with anyio.move_on_after(START_TIMEOUT) as timer:
                ident, confirmed = await self._confirm_start(shim, status_file, token, launch, env)
            if timer.cancelled_caught:
                raise DriverError(f"{spec.command[0]}: not started within {START_TIMEOUT:g}s; the shim was killed")
        except BaseException:
            # No handle will name this unit (failed, timed out or cancelled): nothing of it may keep running.
            group = UnitGroup(shim.pid, shim.pid, None, shim.pidfd)
            if group.alive():
                group.send(SIGKILL)
            group.close()
            os.close(shim.pidfd)
            raise
        finally:
            os.close(shim.report_fd)
        # Kept: stopping the unit waits on its shim too.
        self._pidfds.put((shim.pid, shim.start_ticks), shim.pidfd)
        if not confirmed:
            # Gone before its exec was seen: sh's exec failure codes mean it never ran.
            self._exit_seen.setdefault(ident.key, time.time())
            observation = await self._exit_observation(ident, anyio.current_time() + SHIM_RECORD_WAIT)
            if observation.exit_code in EXEC_FAILED:
                _spawn.find_program(spec, env)
                raise DriverError(
                    f"{spec.command[0]}: could not be executed (exit status {observation.exit_code}; "
                    f"see {launch.stderr_path})"
                )
        return ident

    async def _confirm_start(
        self, shim: _spawn.Spawned, status_file: Path, token: str, launch: Launch, env: dict[bytes, bytes]
    ) -> tuple[Identity, bool]:
        """Read the command's pid from the shim, pin it with a pidfd, wait for its exec.

        Returns its identity and whether the exec was seen (False: it was already gone).
        Why a start failed is looked into only once it has: the happy path checks nothing twice.
        """
        report = await _read_report(shim.report_fd)
        if report is None:
            _spawn.check_cwd(launch.spec)
            _spawn.find_program(launch.spec, env)
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
        opened = _linux.open_pidfd(pid)
        if opened is None:
            return ident, False
        pidfd, stat = opened
        if stat.start_ticks != start_ticks:
            os.close(pidfd)
            return ident, False
        if stat.sid != shim.pid:
            # Only the unit's own processes are in its session: anything else is not ours to watch,
            # unless it has just ended (while it is reaped, /proc shows no session at all).
            ended = bool(_linux.exited([pidfd]))
            os.close(pidfd)
            if ended:
                return ident, False
            raise DriverError(f"the shim reported process {pid}, which is not in the unit's session")
        shim_cmdline = b"".join(os.fsencode(arg) + b"\0" for arg in shim.argv)
        try:
            confirmed = await _exec_seen(pidfd, pid, shim_cmdline)
        except BaseException:
            os.close(pidfd)
            raise
        self._pidfds.put(ident.key, pidfd)
        return ident, confirmed

    # --- observe and wait -------------------------------------------------------

    async def observe(self, handles: Iterable[Handle]) -> Mapping[str, Observation]:
        result: dict[str, Observation] = {}
        polled: list[tuple[str, _Known, int]] = []
        ended: list[tuple[str, Identity]] = []
        for handle in handles:
            known = self._known.get(handle)
            ident = known.ident
            if handle.pid is None:
                result[handle.unit] = Observation(ProcessState.GONE)
            elif ident is None:
                result[handle.unit] = Observation(ProcessState.UNKNOWN, message="not a posix handle")
            elif (settled := self._settled(ident)) is not None:
                result[handle.unit] = settled
            elif (pidfd := self._pidfd(known)) is not None:
                polled.append((handle.unit, known, pidfd))
            elif self._alive_by_stat(ident):
                result[handle.unit] = known.running  # type: ignore[assignment]
            else:
                ended.append((handle.unit, ident))
        if polled:
            exited = self._pidfds.exited([pidfd for _, _, pidfd in polled])
            now = time.time()
            for unit, known, pidfd in polled:
                if pidfd in exited:
                    self._exit_seen.setdefault(known.ident.key, now)  # type: ignore[union-attr]
                    ended.append((unit, known.ident))  # type: ignore[arg-type]
                else:
                    result[unit] = known.running  # type: ignore[assignment]
        deadline = anyio.current_time() + SHIM_RECORD_WAIT
        for unit, ident in ended:
            result[unit] = await self._exit_observation(ident, deadline)
        return result

    def _pidfd(self, known: _Known) -> int | None:
        """The pidfd to poll for this handle's process, if it is worth having one.

        A handle seen for the first time (a one-shot status, the first pass after
        a restart) is checked by one /proc read instead: opening a pidfd costs
        more and pays off only if this driver instance looks again.
        """
        key = known.ident.key  # type: ignore[union-attr]
        if known.revisited:
            return self._pidfds.get(key)
        return self._pidfds.peek(key)

    def _alive_by_stat(self, ident: Identity) -> bool:
        """Whether the process runs, from /proc/PID/stat: the same pid and start ticks, not a zombie."""
        stat = _linux.read_stat(ident.pid)
        if stat is None or stat.start_ticks != ident.start_ticks:
            return False
        if not stat.zombie:
            return True
        # Exited but not reaped yet: a pidfd now gives the exact status once its shim has reaped it.
        self._exit_seen.setdefault(ident.key, time.time())
        self._pidfds.get(ident.key)
        return False

    async def wait(self, handle: Handle) -> None:
        ident = self._known.get(handle).ident
        if ident is None or self._settled(ident) is not None:
            return
        pidfd = self._pidfds.get(ident.key)
        if pidfd is None:
            return
        if ident.shim_key is None and ident.key not in self._kept:
            self._ensure_keeper()
            self._keep(ident, pidfd)  # taken over from an earlier daemon
            await self._keeper.drain()
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
            await self._await_exit_record(ident, deadline)
            wait_status, record = self._exit_sources(ident)
        code, sig, message = exit_facts(wait_status, record)
        observation = Observation(
            ProcessState.EXITED,
            pid=ident.pid,
            started_at=process_start_time(ident.start_ticks),
            exited_at=record.written_at if record is not None else self._exit_seen.get(ident.key),
            exit_code=code,
            exit_signal=sig,
            message=message,
        )
        # Final once the shim has recorded (or never will) and the process is reaped
        # (the kernel's copy of the status then stays): later answers must not get less exact.
        if record is not None or not (self._shim_alive(ident) or _unreaped(ident)):
            self._remember_exit(ident, observation)
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

    def _remember_exit(self, ident: Identity, observation: Observation) -> None:
        self._pidfds.discard(ident.key)
        self._kept.pop(ident.key, None)
        if ident.shim_key is not None:
            self._pidfds.discard(ident.shim_key)
        self._exit_seen.pop(ident.key, None)
        self._exits[ident.key] = observation
        while len(self._exits) > EXIT_MEMORY:
            self._exits.popitem(last=False)

    def _shim_pidfd(self, ident: Identity) -> int | None:
        """The unit's shim's pidfd while the shim runs; None for a unit started directly."""
        return None if ident.shim_key is None else self._pidfds.get(ident.shim_key)

    def _shim_alive(self, ident: Identity) -> bool:
        pidfd = self._shim_pidfd(ident)
        return pidfd is not None and not _linux.exited([pidfd])

    async def _await_exit_record(self, ident: Identity, deadline: float) -> None:
        """Return once the exit status is written down somewhere, or at `deadline`.

        A shim appends its record before it exits; a command started directly
        has its status kept by the kernel once its parent (the reaper, in this
        event loop) has reaped it, and written down by the exit keeper.
        """
        if ident.shim_key is None:
            await _poll_until(lambda: not _unreaped(ident), deadline, longest=0.02)
            if self._exit_sources(ident) == (None, None) and _keeper_alive(ident):
                keeper_deadline = min(deadline, anyio.current_time() + KEEPER_RECORD_WAIT)
                await _poll_until(lambda: read_shim_record(ident) is not None, keeper_deadline, longest=0.05)
            return
        pidfd = self._shim_pidfd(ident)
        if pidfd is None:
            return
        own = os.dup(pidfd)
        try:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await anyio.wait_readable(own)
        finally:
            os.close(own)

    # --- stop and signal -------------------------------------------------------

    async def stop(self, handle: Handle, signal: int, timeout: float, *, signalled: bool = False) -> Observation:
        ident = self._known.get(handle).ident
        group = self._group(ident)
        if ident is not None and group is not None:
            try:
                # Nothing to end once neither the main process nor the shim runs.
                if group.alive():
                    await group.terminate(signal, timeout, signalled=signalled)
                if group.main_exited():
                    self._exit_seen.setdefault(ident.key, time.time())
            finally:
                group.close()
        return (await self.observe([handle]))[handle.unit]

    def begin_stop(self, handle: Handle, signal: int) -> bool:
        group = self._group(self._known.get(handle).ident)
        if group is None:
            return False
        try:
            if not group.alive():
                return False
            group.send(signal, cont=False)  # its SIGCONT follows in stop(): half the sweep's signals
            return True
        finally:
            group.close()

    def _group(self, ident: Identity | None) -> UnitGroup | None:
        """The unit's process group, pinned by its live pidfds; None once the unit is known to be gone."""
        if ident is None or self._settled(ident) is not None:
            return None
        # A direct start leads its own session: it can never leave its group (see UnitGroup).
        leads = ident.shim_pid is None and ident.pgid == ident.pid
        return UnitGroup(ident.pgid, ident.pid, self._pidfds.get(ident.key), self._shim_pidfd(ident), main_leads=leads)

    def signal(self, handle: Handle, signal: int) -> bool:
        ident = self._known.get(handle).ident
        if ident is None or self._settled(ident) is not None:
            return False
        pidfd = self._pidfds.get(ident.key)
        if pidfd is None or _linux.exited([pidfd]):
            return False
        try:
            pidfd_send_signal(pidfd, signal)
        except ProcessLookupError:
            return False
        return True

    async def aclose(self) -> None:
        self._spawn_threads.close()
        self._pidfds.close_all()
        self._keeper.close()


async def _read_report(fd: int) -> tuple[int, int] | None:
    """The "PID START_TICKS" line the shim writes before the exec; None if it ended first."""
    data = b""
    while not data.endswith(b"\n"):
        await anyio.wait_readable(fd)
        chunk = os.read(fd, 64)
        if not chunk:
            return None
        data += chunk
    fields = data.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields) or int(fields[0]) == 0:
        raise DriverError(f"the shim's report is not \"PID START_TICKS\": {data[:64]!r}")
    return int(fields[0]), int(fields[1])


def _unreaped(ident: Identity) -> bool:
    stat = _linux.read_stat(ident.pid)
    return stat is not None and stat.start_ticks == ident.start_ticks and stat.zombie


async def _poll_until(done: Callable[[], bool], deadline: float, longest: float) -> None:
    """Return once `done()` or at `deadline`, looking at short, growing intervals.

    For what has no event of its own: a reaping (the reaper collects our
    children within a turn of the event loop), a record appearing in a file.
    """
    delay = 0.0005
    while not done() and anyio.current_time() < deadline:
        await anyio.sleep(min(delay, max(0.0, deadline - anyio.current_time())))
        delay = min(delay * 2, longest)


def _new_token() -> str:
    """64 random bits from Python's generator (seeded from the OS, again after a fork): a start's token
    needs only to differ from the others in its status file, and a getrandom call per start gave the
    GIL away to the spawn threads."""
    return f"{random.getrandbits(64):016x}"


def _keeper_alive(ident: Identity) -> bool:
    if ident.keeper_pid is None or ident.keeper_start_ticks is None:
        return False
    stat = _linux.read_stat(ident.keeper_pid)
    return stat is not None and stat.start_ticks == ident.keeper_start_ticks and not stat.zombie


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
