"""Verified pidfds on the processes the driver watches, kept open between calls.

A pidfd is the kernel's handle on one exact process: polling it asks the OS,
it caches nothing. Keeping them open turns the next look at a process into a
poll instead of an open and a /proc read, and one epoll set over all of them
answers "which have exited?" in one call whose cost grows with the number of
exits, not with the number of processes.
"""

from __future__ import annotations

import collections
import os
import resource
import select

from . import _linux

Key = tuple[int, int]  # (pid, start ticks): one process for the life of the boot


class PidfdTable:
    """Pidfds by process identity, least recently used closed first.

    The bound keeps a thousand units (two processes each) within the fd limit.
    Every fd stays registered in the epoll set exactly while it is in the table:
    it is unregistered before it is closed, since a duplicate of it elsewhere
    would keep a stale registration alive under a number the kernel may reuse.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._fds: collections.OrderedDict[Key, int] = collections.OrderedDict()
        self._epoll: select.epoll | None = None

    def get(self, key: Key) -> int | None:
        """The pidfd of that process, opened and verified if need be; None if it is gone."""
        fd = self.peek(key)
        if fd is None:
            fd = _linux.open_verified_pidfd(*key)
            if fd is not None:
                self.put(key, fd)
        return fd

    def peek(self, key: Key) -> int | None:
        """The pidfd if the table has it; never opens one."""
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def put(self, key: Key, fd: int) -> None:
        """Take ownership of `fd`, a pidfd already verified to be the process `key`."""
        self.discard(key)
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self._fds[key] = fd
        while len(self._fds) > self._capacity:
            self._close(self._fds.popitem(last=False)[1])

    def discard(self, key: Key) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            self._close(fd)

    def exited(self, among: list[int]) -> set[int]:
        """Those of `among` (fds of this table) whose process has exited; no waiting.

        A few are polled one by one; for many, one epoll_wait lists every exited
        process in the table, at a cost that grows with the exits, not the processes.
        """
        if len(among) * 4 < len(self._fds) or self._epoll is None:
            return _linux.exited(among)
        return {fd for fd, _ in self._epoll.poll(0, len(self._fds))}

    def close_all(self) -> None:
        while self._fds:
            self._close(self._fds.popitem()[1])
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _close(self, fd: int) -> None:
        assert self._epoll is not None
        self._epoll.unregister(fd)
        os.close(fd)


def default_capacity() -> int:
    """Half the open-files limit: the rest is for logs, sockets and the ledger."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 64 if soft == resource.RLIM_INFINITY else max(64, soft // 2)
