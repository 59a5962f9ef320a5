"""A unit's captured output: where it lives, how it is rotated, how it is read back.

The driver opens STATE/logs/NAME.out and NAME.err with O_APPEND and gives them to
the process; this module never writes through the process's descriptors. All of
it is blocking file I/O: async callers go through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from .model import LogSettings

LOGS_DIR = "logs"
_BLOCK = 64 * 1024
_COPY_BUFFER = 1024 * 1024
_MAX_PARTIAL_LINE = 1024 * 1024  # a "line" this long without a newline is shown as is


def log_paths(state_dir: Path, name: str) -> tuple[Path, Path]:
    """The unit's stdout and stderr files."""
    directory = state_dir / LOGS_DIR
    return directory / f"{name}.out", directory / f"{name}.err"


# --- rotation -------------------------------------------------------------------


def oversized(
    state_dir: Path, limits: dict[str, LogSettings], written: set[str] | None = None
) -> list[tuple[Path, LogSettings]]:
    """The live log files larger than their unit's `max_size`.

    Cheap enough to run over a thousand units on every check: no Path objects,
    one stat per file, nothing opened. With `written` (file names), only those
    are looked at: a file nobody wrote cannot have grown.
    """
    directory = state_dir / LOGS_DIR
    if written is None:
        try:
            with os.scandir(directory) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            return []
    else:
        names = sorted(written)
    found = []
    for name in names:
        unit, dot, stream = name.rpartition(".")
        settings = limits.get(unit) if dot and stream in ("out", "err") else None
        if settings is None:
            continue
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_size > settings.max_size:
                found.append((Path(path), settings))
        except FileNotFoundError:
            continue
    return found


def rotated_paths(path: Path) -> list[Path]:
    """The rotated copies of `path` (NAME.out.1, NAME.out.2.gz, ...), newest first."""
    return [p for _, p in sorted(_rotated(path), key=lambda item: item[0])]


def _rotated(path: Path) -> list[tuple[int, Path]]:
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)(\.gz)?", re.ASCII)
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    return [(int(m.group(1)), p) for p in entries if (m := pattern.fullmatch(p.name))]


def rotate_if_needed(path: Path, settings: LogSettings) -> bool:
    """Rotate `path` when it is larger than `settings.max_size`; True if it did.

    Copytruncate: the live file is copied to NAME.1 (older copies shift to .2 ...,
    beyond `keep` they are deleted; gzipped to .N.gz with `compress`), then truncated
    to zero. Renaming it instead would not work: the process writes through a
    descriptor it holds, which cannot be reopened from outside, so it would keep
    filling the renamed file. Because that descriptor has O_APPEND, its next write
    lands at the new end (offset 0), not at its old offset behind a hole.
    The cost: a write landing between the copy's last read and the truncation is
    lost. The copy reads to the very end right before truncating (compression
    happens afterwards, from the copy), so that window is microseconds wide.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= settings.max_size:
        return False
    import shutil  # with gzip, bz2 and lzma, ~5 ms of a daemon's start-up, for a rare rotation

    _shift(path, settings.keep)
    staging = path.with_name(path.name + ".rotating")
    with open(path, "r+b", buffering=0) as live:
        if settings.keep > 0:
            with open(staging, "wb") as copy:
                shutil.copymode(path, staging)
                shutil.copyfileobj(live, copy, _COPY_BUFFER)  # to the end, including writes made meanwhile
        os.ftruncate(live.fileno(), 0)
    if settings.keep > 0:
        _finish(staging, path, compress=settings.compress)
    return True


def _shift(path: Path, keep: int) -> None:
    """Make room for a new .1: .N -> .N+1 (highest first); drop what would pass `keep`."""
    for index, rotated in sorted(_rotated(path), key=lambda item: item[0], reverse=True):
        if index >= keep:
            rotated.unlink(missing_ok=True)
        else:
            suffix = ".gz" if rotated.name.endswith(".gz") else ""
            rotated.rename(path.with_name(f"{path.name}.{index + 1}{suffix}"))


def _finish(staging: Path, path: Path, *, compress: bool) -> None:
    """Turn the staged copy into NAME.1 (or NAME.1.gz, written aside, then renamed whole)."""
    first = path.with_name(f"{path.name}.1")
    if not compress:
        staging.rename(first)
        return
    import gzip
    import shutil

    packing = staging.with_name(staging.name + ".gz")
    with open(staging, "rb") as source, gzip.open(packing, "wb", compresslevel=6) as target:
        shutil.copyfileobj(source, target, _COPY_BUFFER)
    shutil.copymode(staging, packing)
    packing.rename(first.with_name(first.name + ".gz"))
    staging.unlink()


# --- reading --------------------------------------------------------------------


def tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of `path` (without newlines); [] if it does not exist yet.

    Reads backwards in blocks from the end, so a huge log costs a few blocks.
    """
    if n <= 0:
        return []
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return []
    with file:
        end = os.fstat(file.fileno()).st_size
        lines = _split(_read_back(file, end, n))
    return _decode(lines[-n:])


def _read_back(file: BinaryIO, end: int, n: int) -> bytes:
    """Bytes from the end of `file` back to at least `n` full lines (or its start)."""
    chunks: list[bytes] = []
    newlines = 0
    position = end
    while position > 0 and newlines <= n:
        step = min(_BLOCK, position)
        position -= step
        file.seek(position)
        chunk = file.read(step)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    return b"".join(reversed(chunks))


def _split(data: bytes) -> list[bytes]:
    if not data:
        return []
    return data.removesuffix(b"\n").split(b"\n")


def _decode(lines: list[bytes]) -> list[str]:
    return [line.decode("utf-8", "replace") for line in lines]


class LogFollower:
    """Hands out the lines appended to a log file, across rotation and replacement.

    The first `poll()` returns the last `backlog` complete lines present when the
    file was first opened; every later one returns the complete lines appended
    since. A file that shrinks was truncated (copytruncate rotation): reading
    restarts from its beginning. A file replaced by a new one (other inode) is
    read to its end, then the new one from its start. Limit: a truncated file that
    has already grown past the old read position by the next poll looks unchanged.
    """

    def __init__(self, path: Path, *, backlog: int = 0) -> None:
        self.path = path
        self._backlog = backlog
        self._file: BinaryIO | None = None
        self._opened_before = False
        self._offset = 0
        self._partial = b""

    def __enter__(self) -> "LogFollower":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def poll(self) -> list[str]:
        lines: list[str] = []
        if self._file is not None and self._file_was_replaced():
            lines += self._read_new() + self._flush_partial()  # the old file's last words
            self.close()
        if self._file is None:
            lines += self._open()
            if self._file is None:
                return lines
        elif os.fstat(self._file.fileno()).st_size < self._offset:
            lines += self._flush_partial()
            self._offset = 0
        return lines + self._read_new()

    def _open(self) -> list[str]:
        """Open the file; on the very first open, start at its end and return the backlog."""
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            return []
        if self._opened_before:  # a new file in place of the old one: all of it is new
            self._offset = 0
            return []
        self._opened_before = True
        self._offset = os.fstat(self._file.fileno()).st_size
        if self._backlog <= 0:
            return []
        data = _read_back(self._file, self._offset, self._backlog)
        complete, newline, self._partial = data.rpartition(b"\n")
        return _decode(complete.split(b"\n")[-self._backlog :]) if newline else []

    def _file_was_replaced(self) -> bool:
        assert self._file is not None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._file.fileno())
        return (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)

    def _read_new(self) -> list[str]:
        assert self._file is not None
        self._file.seek(self._offset)
        data = self._file.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > _MAX_PARTIAL_LINE:
            complete.append(self._partial)
            self._partial = b""
        return _decode(complete)

    def _flush_partial(self) -> list[str]:
        """A line cut short by rotation or replacement: show what there is of it."""
        partial, self._partial = self._partial, b""
        return _decode([partial]) if partial else []


def follow(path: Path, *, lines: int = 10, interval: float = 0.25) -> Iterator[str]:
    """The last `lines` lines of `path`, then every line appended, forever (`logs -f`).

    Polls every `interval` seconds while nothing is new, like `tail -F`.
    """
    with LogFollower(path, backlog=lines) as follower:
        while True:
            batch = follower.poll()
            yield from batch
            if not batch:
                time.sleep(interval)
