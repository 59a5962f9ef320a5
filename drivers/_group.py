"""A unit's process group: signalled only while it is provably the unit's, then awaited until empty."""

from __future__ import annotations

import os
from signal import SIGCONT, SIGKILL, pidfd_send_signal

import anyio

from . import _linux

KILL_WAIT = 5.0  # after SIGKILL, how long to wait for the group to vanish
REAP_YIELDS = 3  # turns of the event loop granted to the reaper before the group is polled with sleeps


class UnitGroup:
    """A unit's process group (its shim's pid), pinned by pidfds on its main process and shim.

    Each pidfd here is this object's own duplicate, so waiting on it never
    competes with another waiter in the event loop.
    """

    def __init__(
        self, pgid: int, main_pid: int, main: int | None, shim: int | None, *, main_leads: bool = False
    ) -> None:
        """`main` and `shim` are verified pidfds (or None when that process is gone); they are duplicated.

        `main_leads`: the main process called setsid, so `pgid` is its pid. A
        session leader cannot move to another group, so while it runs the
        group is provably its own and a signal to the group reaches it.
        """
        self.pgid = pgid
        self._main_pid = main_pid
        self._main = None if main is None else os.dup(main)
        self._shim = None if shim is None else os.dup(shim)
        self._main_leads = main_leads and pgid == main_pid
        self._ours: bool | None = None

    def close(self) -> None:
        for fd in (self._main, self._shim):
            if fd is not None:
                os.close(fd)
        self._main = self._shim = None

    def alive(self) -> bool:
        """Whether the main process or the shim still runs."""
        members = [fd for fd in (self._main, self._shim) if fd is not None]
        return len(_linux.exited(members)) < len(members)

    def main_exited(self) -> bool:
        return self._main is not None and bool(_linux.exited([self._main]))

    def ours(self) -> bool:
        """Whether the group id names the unit's group, so killpg reaches nobody else.

        A group id cannot be reused while a process is in the group: the shim (the
        leader) alive, or the main process alive and still a member, proves it
        when first asked. The answer then holds for the rest of this stop: the
        kernel hands out pids in a cycle, so a freed id comes back only after the
        whole pid space has been used, never within a stop's few seconds.
        """
        if self._ours is None:
            self._ours = self._leader_alive() or self._main_in_group()
        return self._ours

    def _leader_alive(self) -> bool:
        return self._shim is not None and not _linux.exited([self._shim])

    def _main_in_group(self) -> bool:
        if self._main is None:
            return False
        if self._main_leads:
            return not _linux.exited([self._main])
        stat = _linux.read_stat(self._main_pid)
        # Checked after the read: alive then, so the stat read was the main process's own.
        return stat is not None and stat.pgid == self.pgid and not _linux.exited([self._main])

    async def terminate(self, sig: int, timeout: float, *, signalled: bool = False) -> None:
        """Signal the group, wait for it to end, then SIGKILL whatever is left.

        `signalled`: `sig` was sent already (`send(sig, cont=False)`), and only its SIGCONT follows.

        The signal goes first: with a thousand units stopping at once, each is
        ended sooner when nothing delays its signal.
        """
        self.send(SIGCONT if signalled else sig)
        with anyio.move_on_after(timeout):
            await self.gone()
            return
        self.send(SIGKILL)
        with anyio.move_on_after(KILL_WAIT):
            await self.gone()

    def send(self, sig: int, *, cont: bool = True) -> None:
        """`sig` to the group while it is ours, and to the main process by pidfd if it left the group.

        The main process gets it once: a second SIGTERM or SIGINT can mean "hurry"
        to a program that is already shutting down. Should the main process leave
        the group between the check and the signal, it misses this one; the SIGKILL
        that ends a stop goes to it by pidfd as well.

        A stopped process cannot act on a signal: SIGCONT follows, as systemd does
        (`cont=False` leaves it to the caller: a shutdown sweep sends it later).
        """
        to_group = self.ours()
        main = self._main if sig == SIGKILL or not (to_group and self._main_member()) else None
        for signum in (sig, SIGCONT) if cont and sig not in (SIGKILL, SIGCONT) else (sig,):
            if to_group:
                try:
                    os.killpg(self.pgid, signum)
                except ProcessLookupError:
                    pass
            if main is not None:
                try:
                    pidfd_send_signal(main, signum)
                except ProcessLookupError:
                    pass

    def _main_member(self) -> bool:
        """Whether the main process is in the group now, so a signal to the group reaches it."""
        if self._main_leads:
            return True
        stat = _linux.read_stat(self._main_pid)
        return stat is not None and stat.pgid == self.pgid

    async def gone(self) -> None:
        """Wait for the main process and the shim to exit (events), then for the group to empty.

        A process group has no exit event. The shim is normally our child and
        stays in the group as a zombie until the reaper, in this event loop, has
        had its turn: a few turns are granted first. Then the group is checked at
        growing intervals, with one cheap kill(0), and (zombies may linger) by
        reading /proc once the wait grows long.
        """
        for fd in (self._main, self._shim):
            if fd is not None:
                await anyio.wait_readable(fd)
        for _ in range(REAP_YIELDS):
            if not _linux.group_exists(self.pgid):
                return
            await anyio.sleep(0)
        delay = 0.001
        while _linux.group_exists(self.pgid):
            if delay >= 0.016 and not _linux.group_alive(self.pgid):
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)
