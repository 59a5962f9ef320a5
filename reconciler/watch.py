"""Spec directory events (watchdog) turned into calls into the loop.

Each call names the paths the events were about, so that a new or changed
file can be acted on at once; the loop still follows with a whole pass, which
re-reads everything (cheaply: unchanged files are not parsed again). The paths
are a hint, never the truth: a missed or merged event changes nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Awaitable, Callable

import anyio
from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

from .specs import linked_directories

# watchdog holds each rename's IN_MOVED_FROM back for this long, to pair it with its
# IN_MOVED_TO. When a read of the inotify descriptor falls between the two (about one
# rename in a thousand, more on busy CPUs), its queue sleeps the whole delay even though
# the pair is made at once, and every event behind waits too: a spec renamed into place
# then took 0.5 s to be seen. The pair is one system call apart, so 10 ms is plenty; a
# pair missed all the same becomes a deletion and a creation, which name the same paths.
MOVE_PAIRING_DELAY = 0.01
InotifyMoveEventGrouper.delay = MOVE_PAIRING_DELAY

_Watches = tuple[tuple[str, str, bool], ...]

# Changes only. Opens and read-only closes are left out of the kernel's watch
# itself: every file the reader parses would otherwise come back as two events,
# each handled in watchdog's thread while the GIL is wanted for parsing.
# Attribute changes are in: a chmod or chown can make a spec trusted or not.
# DirModifiedEvent is out: watchdog makes one for the parent after every change
# to a child, whose own event already names it; alone in a wake-up it would bring
# an immediate whole pass for a file staged under a name that is never a spec.
CHANGES = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    DirAttribEvent,
    FileClosedEvent,  # closed after writing
]


class _Poker(FileSystemEventHandler):
    """Runs in watchdog's thread: notes the paths and writes one byte to a pipe the loop waits on.

    A watch is set on where a path really leads (the kernel's watch of a symbolic
    link would see the link, not the directory); its events are named again by
    the path the loop knows.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._directories_changed = False  # a directory came, went or moved: links inside the tree may have too
        self._known_as: dict[str, str] = {}  # watched real directory -> the path the loop knows it by

    def name_as(self, known_as: dict[str, str]) -> None:
        """Name events under each watched real directory by the path the loop knows (the deepest
        real directory first: a link inside the tree may lead into a linked directory)."""
        with self._lock:
            self._known_as = dict(sorted(known_as.items(), key=lambda item: len(item[0]), reverse=True))

    def take(self) -> tuple[set[str], bool]:
        """The files named since the last call, and whether a directory changed."""
        with self._lock:
            paths, self._paths = self._paths, set()
            directories, self._directories_changed = self._directories_changed, False
        return paths, directories

    def on_any_event(self, event: FileSystemEvent) -> None:
        with self._lock:
            if event.is_directory:
                self._directories_changed = True
            else:
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path:
                        self._paths.add(self._as_known(os.fsdecode(path)))
        try:
            os.write(self.fd, b"!")
        except BlockingIOError:
            pass  # a poke is already pending: pokes coalesce

    def _as_known(self, path: str) -> str:
        for real, known in self._known_as.items():
            if path.startswith(real + os.sep):
                return known + path[len(real) :]
        return path


class SpecWatcher:
    """Watch `specs_dir` recursively; if it does not exist yet, watch the nearest parent until it does.

    A symbolic link on the way to it is watched too, in the directory holding it:
    git-sync and Kubernetes volumes deploy a new revision by swapping a link
    atomically, and the kernel's watch follows the link to the old revision.
    """

    def __init__(self, specs_dir: Path, on_change: Callable[[set[str]], Awaitable[None]]) -> None:
        """`on_change` is awaited with the paths of the files that changed (maybe none: a directory)."""
        self.specs_dir = specs_dir
        self.on_change = on_change

    async def run(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        observer = Observer()
        observer.daemon = True
        handler = _Poker(write_fd)
        observer.start()
        try:
            watched = self._rewatch(observer, handler, None, look_for_links=True)
            while True:
                await anyio.wait_readable(read_fd)
                try:
                    while os.read(read_fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                paths, directories_changed = handler.take()
                # Before the loop is told: the pass it runs then reads what the new watches cover.
                look_for_links = directories_changed or self._may_be_a_link(paths, watched)
                watched = self._rewatch(observer, handler, watched, look_for_links=look_for_links)
                await self.on_change(paths)
        finally:
            observer.stop()
            await anyio.to_thread.run_sync(observer.join, abandon_on_cancel=True)
            os.close(read_fd)
            os.close(write_fd)

    def _rewatch(
        self, observer: Observer, handler: _Poker, watched: _Watches | None, *, look_for_links: bool
    ) -> _Watches:
        """Point the watches where `_watches` says, if that changed since `watched`."""
        wanted = self._watches(None if look_for_links else _linked(watched))
        if wanted != watched:
            observer.unschedule_all()
            handler.name_as({real: path for path, real, recursive in wanted if recursive and real != path})
            for _path, real, recursive in wanted:
                observer.schedule(handler, real, recursive=recursive, event_filter=CHANGES)
        return wanted

    def _watches(self, links: list[str] | None) -> _Watches:
        """(path, where it really leads, recursive): the specs dir, or its nearest existing parent,
        the directory of every symbolic link on the way to it, and every directory the reader
        reaches through a symbolic link inside the tree (a recursive watch does not follow links):
        `links` if given, else found again (a walk of the tree: 1000 entries cost about 1 ms)."""
        path = self.specs_dir
        while not path.is_dir() and path != path.parent:
            path = path.parent
        watches = [(str(path), os.path.realpath(path), path == self.specs_dir)]
        for link in (p for p in (path, *path.parents) if p.is_symlink()):
            watches.append((str(link.parent), os.path.realpath(link.parent), False))
        if path == self.specs_dir:
            inside = linked_directories(str(path)) if links is None else links
            watches += [(link, os.path.realpath(link), True) for link in inside]
        return tuple(watches)

    def _may_be_a_link(self, paths: set[str], watched: _Watches | None) -> bool:
        """Whether a file event may have made, moved or removed a directory link inside the tree
        (inotify reports a symbolic link as a file): a path that is a link now, or was one."""
        known = set(_linked(watched))
        return any(path in known or os.path.islink(path) for path in paths)


def _linked(watched: _Watches | None) -> list[str]:
    """The directory links inside the tree among `watched`."""
    return [path for path, _real, recursive in (watched or ())[1:] if recursive]
