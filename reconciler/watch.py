"""Spec directory events (watchdog) turned into pokes of the loop.

Events carry no payload into the loop: any change anywhere under the specs
directory just asks for a pass, which re-reads everything (cheaply: unchanged
files are not parsed again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import anyio
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class _Poker(FileSystemEventHandler):
    """Runs in watchdog's thread: writes one byte to a pipe the loop waits on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (ours included) change nothing
        try:
            os.write(self.fd, b"!")
        except BlockingIOError:
            pass  # a poke is already pending: pokes coalesce


class SpecWatcher:
    """Watch `specs_dir` recursively; if it does not exist yet, watch the nearest parent until it does."""

    def __init__(self, specs_dir: Path, poke: Callable[[], None]) -> None:
        self.specs_dir = specs_dir
        self.poke = poke

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
                    observer.schedule(handler, target, recursive=target == str(self.specs_dir))
                    watched = target
                await anyio.wait_readable(read_fd)
                try:
                    while os.read(read_fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                self.poke()
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
