"""The driver's side of the exit keeper (_keeper.py): start it, hand it units, let it go."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from reconciler.errors import DriverError

from . import _keeper, _linux, _posix_spawn, _spawn


class KeeperClient:
    """The driver's side: starts the keeper when first needed, and again if it died."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._channel: socket.socket | None = None
        self._pidfd: int | None = None
        self.identity: tuple[int, int] | None = None  # (pid, start ticks) of the keeper running for us

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
        """Hand the running keeper a duplicate of `pidfd`, and where to write that start's exit."""
        assert self._channel is not None, "ensure() first"
        socket.send_fds(self._channel, [_keeper.encode_request(token, pid, start_ticks, status_file)], [pidfd])

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
        self._channel = ours
        self._pidfd, start_ticks = _spawn.pin_child(pid)
        self.identity = (pid, start_ticks)

    def close(self) -> None:
        """Let go of the keeper: it goes on watching, and exits when all it watches has ended."""
        if self._channel is not None:
            self._channel.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._channel = self._pidfd = self.identity = None
