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
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

# Changes only. Opens and read-only closes are left out of the kernel's watch
# itself: every file the reader parses would otherwise come back as two events,
# each handled in watchdog's thread while the GIL is wanted for parsing.
CHANGES = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileClosedEvent,  # closed after writing
]


class _Poker(FileSystemEventHandler):
    """Runs in watchdog's thread: notes the paths and writes one byte to a pipe the loop waits on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._paths: set[str] = set()

    def take(self) -> set[str]:
        """The paths named since the last call."""
        with self._lock:
            paths, self._paths = self._paths, set()
        return paths

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            with self._lock:
                self._paths.update(os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p)
        try:
            os.write(self.fd, b"!")
        except BlockingIOError:
            pass  # a poke is already pending: pokes coalesce


class SpecWatcher:
    """Watch `specs_dir` recursively; if it does not exist yet, watch the nearest parent until it does."""

    def __init__(self, specs_dir: Path, on_change: Callable[[set[str]], Awaitable[None]]) -> None:
        """`on_change` is awaited with the paths of the files that changed (maybe none: a directory)."""
        self.specs_dir = specs_dir
        self.on_change = on_change

    async def run(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        observer = Observer()
        observer.daemon = True
        handler = _Poker(write_fd)
        watched: str | None = None
        observer.start()
        try:
            while True:
                target = self._target()
                if target != watched:
                    observer.unschedule_all()
                    observer.schedule(handler, target, recursive=target == str(self.specs_dir), event_filter=CHANGES)
                    watched = target
                await anyio.wait_readable(read_fd)
                try:
                    while os.read(read_fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                await self.on_change(handler.take())
        finally:
            observer.stop()
            await anyio.to_thread.run_sync(observer.join, abandon_on_cancel=True)
            os.close(read_fd)
            os.close(write_fd)

    def _target(self) -> str:
        path = self.specs_dir
        while not path.is_dir() and path != path.parent:
            path = path.parent
        return str(path)
