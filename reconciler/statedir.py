"""The state directory: created private, and locked by the one reconciler acting on it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import LockHeld, StateError


def ensure_state_dir(path: Path) -> None:
    """Create the directory 0700: it holds logs and exit records of every unit."""
    make_dir(path, "the state directory", mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StateError(f"{path}: cannot make the state directory private: {exc.strerror}") from None


def make_dir(path: Path, what: str, *, mode: int = 0o777) -> None:
    """Create `path` (and its parents) if missing. One that cannot be is a one-line
    StateError naming it, said before anything is started."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        raise StateError(f"{path}: {what} is not a directory") from None
    except OSError as exc:
        raise StateError(f"{path}: cannot create {what}: {exc.strerror}") from None


class StateLock:
    """An exclusive flock on STATE/lock holding the owner's pid.

    The kernel drops the lock when the holder dies (even by SIGKILL), so a
    stale lock never blocks a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot lock the state directory: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(holder_pid(self.path), str(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_pid(path: Path) -> int | None:
    """The pid written by the current holder, if any (None if unlocked or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
