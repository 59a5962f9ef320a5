"""Which files of one directory were written since last asked (inotify), so a check can skip the rest.

The daemon checks unit logs for rotation every 30 s; with a thousand idle units,
a stat of every file was nearly all of its idle CPU. Linux only; elsewhere, and
whenever the answer is not certain, every file is looked at as before.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct

IN_MODIFY = 0x00000002
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000  # the watch is gone (the directory was removed or replaced)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


@functools.cache
def _libc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
    return libc if hasattr(libc, "inotify_init1") else None


class WrittenFiles:
    """The names of the files in `directory` written since the last `take()`.

    The kernel queues an IN_MODIFY event per write (a file's repeated events
    merge while they wait) and the queue is read only when asked: nothing wakes
    up in between, and a file nobody wrote is never looked at. `take()` returns
    None when it cannot be sure (no inotify, the directory missing or replaced,
    the queue overflowed, the first call): the caller then looks at every file.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        libc = _libc()
        fd = -1 if libc is None else libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        self._fd: int | None = fd if fd >= 0 else None
        self._watching = False

    def take(self) -> set[str] | None:
        if self._fd is None:
            return None
        if not self._watching:
            wd = _libc().inotify_add_watch(self._fd, os.fsencode(self.directory), IN_MODIFY)  # type: ignore[union-attr]
            self._watching = wd >= 0
            self._drain()  # whatever was queued before belongs to an older watch
            return None
        names, certain = self._drain()
        if not certain:
            self._watching = False
            return None
        return names

    def _drain(self) -> tuple[set[str], bool]:
        names: set[str] = set()
        certain = True
        while True:
            try:
                data = os.read(self._fd, 65536)  # type: ignore[arg-type]
            except BlockingIOError:
                return names, certain
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & (IN_Q_OVERFLOW | IN_IGNORED):
                    certain = False
                elif length:
                    names.add(os.fsdecode(data[offset : offset + length].rstrip(b"\0")))
                offset += length

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
