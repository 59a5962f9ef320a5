"""Log files: rotation under a real O_APPEND writer process, tail, follow across truncation."""

from __future__ import annotations

import gzip
import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from reconciler.logs import LogFollower, follow, log_paths, rotate_if_needed, rotated_paths, tail
from reconciler.model import LogSettings
from tests.conftest import wait_until

LINE = re.compile(r"line (\d{8}) x{40}")

# Writes numbered lines through an O_APPEND descriptor, like a unit whose stdout the driver opened.
WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
for number in range(int(sys.argv[2]), 10**8):
    os.write(fd, b"line %08d %s\n" % (number, b"x" * 40))
    time.sleep(0.0005)
"""


@pytest.fixture
def start_writer() -> Iterator[Callable[[Path], subprocess.Popen]]:
    children: list[subprocess.Popen] = []

    def start(path: Path, first_number: int = 1) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first_number)], start_new_session=True)
        children.append(child)
        return child

    yield start
    for child in children:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def numbers(text: str) -> list[int]:
    """The line numbers in `text`, insisting that every line is whole."""
    lines = text.splitlines()
    for line in lines:
        assert LINE.fullmatch(line), f"torn or foreign line: {line!r}"
    return [int(LINE.fullmatch(line).group(1)) for line in lines]  # type: ignore[union-attr]


def read_rotated(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()


def test_log_paths() -> None:
    assert log_paths(Path("/state"), "web") == (Path("/state/logs/web.out"), Path("/state/logs/web.err"))


@pytest.mark.parametrize("compress", [False, True])
def test_rotation_under_a_live_writer(tmp_path: Path, start_writer, compress: bool) -> None:
    live = tmp_path / "web.out"
    settings = LogSettings(max_size=4096, keep=3, compress=compress)
    writer = start_writer(live)
    for _ in range(5):
        wait_until(lambda: size(live) > settings.max_size)
        assert rotate_if_needed(live, settings)
        assert size(live) < settings.max_size
        wait_until(lambda: size(live) > 200)  # the writer carries on at the new end
    assert writer.poll() is None

    rotated = rotated_paths(live)
    suffix = ".gz" if compress else ""
    assert [p.name for p in rotated] == [f"web.out.{i}{suffix}" for i in (1, 2, 3)]
    # Oldest to newest, then the live file: whole lines, in writing order, no hole of NULs.
    chunks = [numbers(read_rotated(p)) for p in reversed(rotated)] + [numbers(live.read_text())]
    assert all(chunk for chunk in chunks)
    sequence = list(itertools.chain.from_iterable(chunks))
    assert sequence == sorted(sequence)
    assert len(set(sequence)) == len(sequence)


def test_no_rotation_below_max_size_or_without_file(tmp_path: Path) -> None:
    live = tmp_path / "web.out"
    settings = LogSettings(max_size=100, keep=2)
    assert not rotate_if_needed(live, settings)
    live.write_bytes(b"x" * 100)
    assert not rotate_if_needed(live, settings)
    assert rotated_paths(live) == []
    assert size(live) == 100


def test_keep_zero_only_truncates(tmp_path: Path) -> None:
    live = tmp_path / "web.err"
    live.write_bytes(b"oops\n" * 100)
    assert rotate_if_needed(live, LogSettings(max_size=10, keep=0))
    assert size(live) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["web.err"]


def test_shift_handles_mixed_compression_and_lower_keep(tmp_path: Path) -> None:
    """Settings change between rotations: older plain and gzipped copies shift together."""
    live = tmp_path / "web.out"
    (tmp_path / "web.out.1.gz").write_bytes(gzip.compress(b"one\n"))
    (tmp_path / "web.out.2").write_bytes(b"two\n")
    (tmp_path / "web.out.3").write_bytes(b"three\n")
    (tmp_path / "web.out.10").write_bytes(b"ten\n")
    (tmp_path / "web.outer.1").write_bytes(b"another unit\n")
    live.write_bytes(b"now\n" * 10)

    assert rotate_if_needed(live, LogSettings(max_size=10, keep=3, compress=False))

    assert [p.name for p in rotated_paths(live)] == ["web.out.1", "web.out.2.gz", "web.out.3"]
    assert [read_rotated(p) for p in rotated_paths(live)] == ["now\n" * 10, "one\n", "two\n"]
    assert (tmp_path / "web.outer.1").exists()
    assert not (tmp_path / "web.out.rotating").exists()


def test_rotated_copy_keeps_the_file_mode(tmp_path: Path) -> None:
    live = tmp_path / "web.out"
    live.write_bytes(b"secret\n" * 10)
    live.chmod(0o600)
    assert rotate_if_needed(live, LogSettings(max_size=10, keep=2, compress=True))
    assert (rotated_paths(live)[0].stat().st_mode & 0o777) == 0o600


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "web.out"
    assert tail(path, 3) == []  # not written yet
    path.write_bytes(b"")
    assert tail(path, 3) == []
    path.write_bytes(b"a\nb\n\nc\n")
    assert tail(path, 0) == []
    assert tail(path, 2) == ["", "c"]
    assert tail(path, 10) == ["a", "b", "", "c"]
    path.write_bytes(b"a\nb\nunfinished")
    assert tail(path, 2) == ["b", "unfinished"]
    path.write_bytes(b"\n")
    assert tail(path, 5) == [""]
    path.write_bytes(b"caf\xc3\xa9\n\xff\n")  # UTF-8, then a byte that is not
    assert tail(path, 2) == ["caf\u00e9", "\ufffd"]


def test_tail_on_a_big_file_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "big.out"
    lines = [f"line {i:08d} " + "y" * (i % 300) for i in range(120_000)]  # ~20 MB
    path.write_text("\n".join(lines) + "\n")
    for n in (1, 7, 500, 3000):
        assert tail(path, n) == lines[-n:]


def test_tail_reads_only_the_end(tmp_path: Path) -> None:
    """64 GiB of hole before the last lines: reading it all would never finish in time."""
    path = tmp_path / "sparse.out"
    with open(path, "wb") as file:
        file.truncate(64 * 1024**3)
        file.seek(0, os.SEEK_END)
        file.write(b"\nalmost last\nlast\n")
    assert tail(path, 2) == ["almost last", "last"]


def test_follower_backlog_then_appends_then_truncation(tmp_path: Path) -> None:
    path = tmp_path / "web.out"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"".join(b"old %d\n" % i for i in range(100)) + b"half")
        with LogFollower(path, backlog=2) as follower:
            assert follower.poll() == ["old 98", "old 99"]
            assert follower.poll() == []
            os.write(fd, b" a line\nnext\n")
            assert follower.poll() == ["half a line", "next"]
            os.write(fd, b"cut")
            assert follower.poll() == []  # not a whole line yet
            assert rotate_if_needed(path, LogSettings(max_size=10, keep=1))
            os.write(fd, b"after 1\nafter 2\n")
            assert follower.poll() == ["cut", "after 1", "after 2"]
            assert (path.parent / "web.out.1").read_bytes().endswith(b"next\ncut")
            # What was written and rotated away between two polls is in the rotated copy only.
            os.write(fd, b"unseen\n" * 3)
            assert rotate_if_needed(path, LogSettings(max_size=10, keep=1))
            os.write(fd, b"seen\n")
            assert follower.poll() == ["seen"]
    finally:
        os.close(fd)


def test_follower_waits_for_the_file_and_survives_replacement(tmp_path: Path) -> None:
    path = tmp_path / "web.out"
    with LogFollower(path, backlog=5) as follower:
        assert follower.poll() == []
        path.write_bytes(b"first\n")
        assert follower.poll() == ["first"]
        with open(path, "ab") as file:
            file.write(b"last of old")
        path.unlink()
        assert follower.poll() == ["last of old"]
        path.write_bytes(b"new 1\nnew 2\n")
        assert follower.poll() == ["new 1", "new 2"]


def test_follow_a_live_writer_across_rotation(tmp_path: Path, start_writer) -> None:
    path = tmp_path / "web.out"
    # A big head start: the truncation is only noticed while the file is still shorter
    # than where the follower had read to, which a slowed-down test must not outrun.
    prefill = 20_000
    path.write_bytes(b"".join(b"line %08d %s\n" % (i, b"x" * 40) for i in range(1, prefill)))
    prefilled = size(path)
    start_writer(path, prefill)
    wait_until(lambda: size(path) > prefilled)
    lines = follow(path, lines=3, interval=0.005)
    backlog = [next(lines) for _ in range(3)]
    seen = numbers("\n".join(backlog))
    while seen[-1] < seen[0] + 50:
        seen += numbers(next(lines))
    assert rotate_if_needed(path, LogSettings(max_size=10, keep=1))
    last_rotated = numbers(read_rotated(path.parent / "web.out.1"))[-1]
    while seen[-1] <= last_rotated + 50:
        seen += numbers(next(lines))
    lines.close()
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert seen[-1] > last_rotated


def test_oversized_finds_only_live_logs_above_their_units_limit(tmp_path):
    from reconciler.logs import LOGS_DIR, oversized

    logs = tmp_path / LOGS_DIR
    logs.mkdir()
    small, big = LogSettings(max_size=10), LogSettings(max_size=1000)
    (logs / "a.out").write_bytes(b"x" * 11)  # over a's limit
    (logs / "a.err").write_bytes(b"x" * 10)  # at the limit: fine
    (logs / "a.out.1").write_bytes(b"x" * 50)  # a rotated copy: never rotated again
    (logs / "b.out").write_bytes(b"x" * 500)  # under b's limit
    (logs / "gone.out").write_bytes(b"x" * 50)  # no such unit
    assert oversized(tmp_path, {"a": small, "b": big}) == [(logs / "a.out", small)]
    assert oversized(tmp_path / "missing", {"a": small}) == []
    # Told which files were written, it looks at those only (a vanished one is skipped).
    assert oversized(tmp_path, {"a": small, "b": big}, {"a.err", "b.out", "a.out.1", "vanished.out"}) == []
    assert oversized(tmp_path, {"a": small}, {"a.out"}) == [(logs / "a.out", small)]
