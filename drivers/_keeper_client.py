"""The driver's side of the exit keeper (_keeper.py): start it, hand it units, let it go.

The channel is non-blocking: a keeper that does not read (stopped, or still
starting its interpreter) never holds up the event loop. What the channel cannot
take is queued, and the start that found it full waits for room and sends it.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import anyio

from reconciler.errors import DriverError

from . import _keeper, _linux, _posix_spawn, _spawn

CLOSE_SEND_WAIT = 1.0  # seconds a closing driver waits for the keeper to take what is still queued


class KeeperClient:
    """The driver's side: starts the keeper when first needed, and again if it died."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._channel: socket.socket | None = None
        self._pidfd: int | None = None
        self.identity: tuple[int, int] | None = None  # (pid, start ticks) of the keeper running for us
        self._queue: list[tuple[bytes, int]] = []  # requests not sent yet, each with our duplicate of its pidfd
        self._sending = False  # a task waits for room in the channel and sends all that is queued

    def ensure(self) -> bool:
        """Make sure a keeper runs; False if one had to be started (it watches nothing yet)."""
        if self._pidfd is not None and not _linux.exited([self._pidfd]):
            return True
        try:
            self._start()
        except OSError as exc:
            raise DriverError(f"cannot start the exit keeper: {exc.strerror}") from exc
        return False

    def watch(self, token: str, pid: int, start_ticks: int, status_file: str, pidfd: int) -> None:
        """Have the running keeper watch `pidfd`, and write that start's exit to `status_file`:
        sent at once if the channel has room, else queued for `drain`."""
        assert self._channel is not None, "ensure() first"
        request = _keeper.encode_request(token, pid, start_ticks, status_file)
        if not self._queue:
            try:
                socket.send_fds(self._channel, [request], [pidfd])
                return
            except BlockingIOError:
                pass
            except OSError:
                return  # the keeper is gone: the one started in its place is handed every kept unit
        self._queue.append((request, os.dup(pidfd)))  # our own: the caller may close its pidfd before it is sent

    async def drain(self) -> None:
        """Send all that is queued, waiting for room in the channel; at once if another task already does."""
        if self._sending:
            return
        self._sending = True
        try:
            while self._channel is not None and not self._send_queued():
                await anyio.wait_writable(self._channel)
        except anyio.ClosedResourceError:
            pass  # closed while we waited: close() sent or dropped what was queued
        finally:
            self._sending = False

    def _send_queued(self) -> bool:
        """Send queued requests until the channel is full; True once none is left."""
        try:
            while self._queue and self._channel is not None:
                request, pidfd = self._queue[0]
                socket.send_fds(self._channel, [request], [pidfd])
                del self._queue[0]
                os.close(pidfd)
        except BlockingIOError:
            return False
        except OSError:  # the keeper is gone (the one started in its place is handed every kept unit),
            for _, pidfd in self._queue:  # or a closing driver waited for it in vain
                os.close(pidfd)
            self._queue.clear()
        return True

    def _start(self) -> None:
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Its own log: it outlives the daemon, so it must not hold the daemon's stdout or stderr open.
        log = _spawn.open_log(self._log_path)
        try:
            pid = _posix_spawn.spawn(
                os.fsencode(sys.executable),
                [os.fsencode(sys.executable), b"-m", _keeper.__name__.encode()],
                [key + b"=" + value for key, value in os.environb.items()],
                cwd=b"/",
                stdin=theirs.fileno(),
                stdout=log,
                stderr=log,
            )
        finally:
            theirs.close()
            os.close(log)
        ours.setblocking(False)
        self._channel = ours
        self._pidfd, start_ticks = _spawn.pin_child(pid)
        self.identity = (pid, start_ticks)

    def close(self) -> None:
        """Let go of the keeper: it goes on watching, and exits when all it watches has ended."""
        if self._channel is not None:
            if self._sending:
                anyio.notify_closing(self._channel)
            self._channel.settimeout(CLOSE_SEND_WAIT)
            self._send_queued()  # the last ones, so the keeper knows every unit that outlives us
            self._channel.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._channel = self._pidfd = self.identity = None
