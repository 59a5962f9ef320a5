"""The event log: STATE/events.jsonl, one JSON object per line, rotated by size.

Several processes write it (the daemon, `reconciler restart`), so every append
holds an exclusive flock on a sidecar lock file and writes each batch of whole
lines with one write on an O_APPEND descriptor: lines never interleave, and no
one rotates twice or writes into a file being renamed. Readers take the same
lock shared, only to open a consistent set of files; then they read at leisure
from descriptors that survive later renames.

A line that is not a complete JSON object (a write cut short by a crash or a
full disk) is skipped by readers; writers start a new line after one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import orjson

from .errors import StateError
from .model import iso_utc
from .statedir import make_dir

LOCK_SUFFIX = ".lock"
FOLLOW_POLL_SECONDS = 0.2


def format_event(event: str, unit: str | None = None, *, ts: float | None = None, **fields: Any) -> bytes:
    """One event as one line: `ts` first (contract time format), then `event`, `unit`, the fields."""
    record: dict[str, Any] = {"ts": iso_utc(time.time() if ts is None else ts), "event": event}
    if unit is not None:
        record["unit"] = unit
    record.update(fields)
    return orjson.dumps(record, default=_plain) + b"\n"


def _plain(value: Any) -> Any:
    # orjson already handles enums; paths are the one other thing events carry.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot put {type(value).__name__} into an event")


class EventLog:
    """The writer. Cheap to keep open: it holds only the lock file's descriptor."""

    def __init__(self, path: Path, *, max_bytes: int = 10 * 1024 * 1024, keep: int = 5) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        make_dir(self.path.parent, "the state directory")
        # flock excludes other open files, not other threads sharing this one.
        self._thread_lock = threading.Lock()
        self._lock_fd = -1
        try:
            self._lock_fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.close(self._open_live())  # one that cannot be written says so now, not at the first event
        except OSError as exc:
            self.close()
            raise StateError(f"{exc.filename}: cannot write the event log: {exc.strerror}") from None

    def append(self, event: str, unit: str | None = None, *, ts: float | None = None, **fields: Any) -> None:
        self._write([format_event(event, unit, ts=ts, **fields)])

    def append_many(self, events: Iterable[dict[str, Any]]) -> None:
        """Append several events under one lock: each dict has `event`, optionally `unit` and `ts`."""
        lines = []
        for item in events:
            fields = dict(item)
            event = fields.pop("event")
            unit = fields.pop("unit", None)
            ts = fields.pop("ts", None)
            lines.append(format_event(event, unit, ts=ts, **fields))
        if lines:
            self._write(lines)

    def close(self) -> None:
        with self._thread_lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, lines: list[bytes]) -> None:
        with self._thread_lock, _flocked(self._lock_fd, fcntl.LOCK_EX):
            fd = self._open_live()
            try:
                size = self._start_line(fd)
                batch: list[bytes] = []
                for line in lines:
                    if size and size + len(line) > self.max_bytes:
                        _write_all(fd, b"".join(batch))
                        os.close(fd)
                        fd = -1
                        self._rotate()
                        fd = self._open_live()
                        size, batch = 0, []
                    batch.append(line)
                    size += len(line)
                _write_all(fd, b"".join(batch))
            finally:
                if fd >= 0:
                    os.close(fd)

    def _open_live(self) -> int:
        # Readable too: _start_line looks at the last byte.
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @staticmethod
    def _start_line(fd: int) -> int:
        """The file's size, after ending a torn last line so the next line stands alone."""
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            _write_all(fd, b"\n")
            size += 1
        return size

    def _rotate(self) -> None:
        """events.jsonl -> .1 -> .2 ... -> .keep; the oldest (and any beyond keep) are dropped."""
        for number, path in reversed(rotated_files(self.path)):
            if number >= self.keep:
                path.unlink()
            else:
                os.replace(path, numbered(self.path, number + 1))
        if self.keep:
            os.replace(self.path, numbered(self.path, 1))
        else:
            self.path.unlink()


def lock_path(path: Path) -> Path:
    return Path(path).with_suffix(LOCK_SUFFIX)


def numbered(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


def rotated_files(path: Path) -> list[tuple[int, Path]]:
    """The rotated files that exist, newest (.1) first."""
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)")
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path.parent):
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


# --- reading -------------------------------------------------------------------


def read_events(path: Path, *, unit: str | None = None) -> Iterator[dict[str, Any]]:
    """Every event, oldest first, across the rotated files and the live one."""
    older, live = _open_set(Path(path))
    files = [*older, *([live] if live is not None else [])]
    try:
        for file in files:
            yield from _matching(_whole_lines(file), unit)
    finally:
        for file in files:
            file.close()


def follow(
    path: Path,
    *,
    unit: str | None = None,
    stop: Callable[[], bool] | None = None,
    from_start: bool = False,
    poll_interval: float = FOLLOW_POLL_SECONDS,
) -> Iterator[dict[str, Any]]:
    """Events as they are appended, until `stop()`; with `from_start`, all existing ones first.

    "New" means appended after the generator first runs. Survives rotation:
    when the file being read is renamed away it is final, so the rest of it is
    read, then the files rotated after it, oldest first, then the new live file.
    """
    path = Path(path)
    should_stop = stop or (lambda: False)
    older, current = _open_set(path)
    if current is None and older:
        current = older.pop()  # no live file this instant: carry on from the newest rotated one
    if not from_start:
        _close_all(older)
        older = []
        if current is not None:
            current.seek(0, os.SEEK_END)
    pending = b""
    try:
        while True:
            for file in older:
                yield from _matching(_whole_lines(file), unit)
            _close_all(older)
            older = []
            if should_stop():
                return
            if current is None:
                older, current = _open_set(path)  # nothing existed before: all of it is new
                if current is None and older:
                    current = older.pop()
                if current is None:
                    time.sleep(poll_interval)
                continue
            live = _is_current(current, path)
            lines, pending = _split_complete(pending + current.read())
            yield from _matching(lines, unit)
            if live:
                time.sleep(poll_interval)
                continue
            # Renamed away before that read, so it is final: anything unterminated is torn.
            pending = b""
            newer, successor = _open_set(path, after=current)
            if successor is None and newer:
                successor = newer.pop()
            if successor is None:
                time.sleep(poll_interval)  # the live file is being replaced; keep our place
                continue
            current.close()
            older, current = newer, successor
    finally:
        _close_all([*older, *([current] if current is not None else [])])


def _open_set(path: Path, after: BinaryIO | None = None) -> tuple[list[BinaryIO], BinaryIO | None]:
    """The rotated files (oldest first) and the live file, opened together under the
    shared lock so that no rotation happens in between; the descriptors keep
    reading the same files whatever is renamed later.

    With `after` (a file rotated away), only the rotated files newer than it:
    it is .k now and those are .k-1 ... .1; if it was dropped, all are newer.
    """
    with _shared_lock(path):
        rotated = [p for _, p in rotated_files(path)]
        if after is not None:
            after_id = _file_id(os.fstat(after.fileno()))
            ids = [_stat_id(p) for p in rotated]
            if after_id in ids:
                rotated = rotated[: ids.index(after_id)]
        older = [f for f in map(_open_or_none, reversed(rotated)) if f is not None]
        return older, _open_or_none(path)


def _stat_id(path: Path) -> tuple[int, int] | None:
    try:
        return _file_id(path.stat())
    except FileNotFoundError:
        return None


def _close_all(files: Iterable[BinaryIO]) -> None:
    for file in files:
        file.close()


def _is_current(file: BinaryIO, path: Path) -> bool:
    try:
        return _file_id(path.stat()) == _file_id(os.fstat(file.fileno()))
    except FileNotFoundError:
        return False


def _file_id(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _open_or_none(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    """Hold off rotation while opening files; readers never create the lock file."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        with _flocked(fd, fcntl.LOCK_SH):
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flocked(fd: int, operation: int) -> Iterator[None]:
    fcntl.flock(fd, operation)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes) -> None:
    # One write in practice; the loop only matters on a short write, and the
    # exclusive lock keeps everyone else out until the line is whole.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _split_complete(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole lines, and the unterminated rest (still being written, or torn)."""
    head, sep, rest = data.rpartition(b"\n")
    return (head.split(b"\n") if sep else []), rest


def _whole_lines(file: BinaryIO) -> Iterator[bytes]:
    """The file's newline-terminated lines; an unterminated last one is being written, or torn."""
    for line in file:
        if line.endswith(b"\n"):
            yield line


def _matching(lines: Iterable[bytes], unit: str | None) -> Iterator[dict[str, Any]]:
    for line in lines:
        event = _parse(line)
        if event is not None and (unit is None or event.get("unit") == unit):
            yield event


def _parse(line: bytes) -> dict[str, Any] | None:
    """The event on a line, or None for a blank or torn line."""
    if not line.strip():
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
