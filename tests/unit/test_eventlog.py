"""The event log: line format, rotation, concurrent writer processes, reading and following."""

from __future__ import annotations

import datetime
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from reconciler.eventlog import EventLog, follow, read_events, rotated_files
from reconciler.model import UnitState
from tests.conftest import wait_until

TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")




@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "events.jsonl"


def raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def all_files(path: Path) -> list[Path]:
    """Rotated files oldest first, then the live one."""
    return [p for _, p in reversed(rotated_files(path))] + [path]


# --- format --------------------------------------------------------------------


def test_a_line_has_ts_first_then_event_unit_and_fields(log_path: Path):
    with EventLog(log_path) as log:
        log.append("unit.exited", "web", ts=1795456800.1234, exit_code=3, exit_signal=None)
    assert raw_lines(log_path) == [
        b'{"ts":"2026-11-23T18:00:00.123Z","event":"unit.exited","unit":"web","exit_code":3,"exit_signal":null}'
    ]


def test_unit_is_left_out_when_not_given(log_path: Path):
    with EventLog(log_path) as log:
        log.append("pass.completed", ts=0.0, actions=2, duration_ms=17)
    assert raw_lines(log_path) == [b'{"ts":"1970-01-01T00:00:00.000Z","event":"pass.completed","actions":2,"duration_ms":17}']


def test_ts_defaults_to_now_in_the_contract_format(log_path: Path):
    before = time.time()
    with EventLog(log_path) as log:
        log.append("reconciler.started")
    after = time.time()
    (event,) = read_events(log_path)
    assert list(event) == ["ts", "event"]
    assert TIME_FORMAT.fullmatch(event["ts"])
    stamp = datetime.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert int(before * 1000) / 1000 <= stamp <= after


def test_paths_and_enums_become_strings(log_path: Path, tmp_path: Path):
    with EventLog(log_path) as log:
        log.append("spec.invalid", path=tmp_path / "bad.toml", error="boom", state=UnitState.FAILED, ts=0.0)
    (event,) = read_events(log_path)
    assert event["path"] == str(tmp_path / "bad.toml")
    assert event["state"] == "failed"


def test_append_many_writes_each_event_in_order_with_the_same_layout(log_path: Path):
    with EventLog(log_path) as log:
        log.append_many(
            [
                {"event": "spec.added", "unit": "web", "ts": 1.0},
                {"unit": "web", "pid": 42, "event": "unit.started", "ts": 2.0},
                {"event": "pass.completed", "actions": 1, "duration_ms": 3, "ts": 3.0},
            ]
        )
    assert raw_lines(log_path) == [
        b'{"ts":"1970-01-01T00:00:01.000Z","event":"spec.added","unit":"web"}',
        b'{"ts":"1970-01-01T00:00:02.000Z","event":"unit.started","unit":"web","pid":42}',
        b'{"ts":"1970-01-01T00:00:03.000Z","event":"pass.completed","actions":1,"duration_ms":3}',
    ]


# --- rotation ------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
def test_rotation_keeps_exactly_keep_files_with_the_newest_events(log_path: Path, batched: bool):
    with EventLog(log_path, max_bytes=300, keep=3) as log:
        events = [{"event": "tick", "seq": seq, "ts": 0.0} for seq in range(200)]
        if batched:
            log.append_many(events)
        else:
            for event in events:
                log.append("tick", seq=event["seq"], ts=0.0)
    assert [n for n, _ in rotated_files(log_path)] == [1, 2, 3]
    seqs = [event["seq"] for event in read_events(log_path)]
    assert seqs == list(range(seqs[0], 200))  # a contiguous, newest-last suffix
    for path in all_files(log_path):
        assert 0 < path.stat().st_size <= 300
        assert path.read_bytes().endswith(b"\n")


def test_keep_zero_keeps_only_the_live_file(log_path: Path):
    with EventLog(log_path, max_bytes=200, keep=0) as log:
        for seq in range(50):
            log.append("tick", seq=seq, ts=0.0)
    assert rotated_files(log_path) == []
    assert [e["seq"] for e in read_events(log_path)][-1] == 49


def test_rotated_files_beyond_a_smaller_keep_are_dropped(log_path: Path):
    with EventLog(log_path, max_bytes=200, keep=5) as log:
        for seq in range(100):
            log.append("tick", seq=seq, ts=0.0)
    assert len(rotated_files(log_path)) == 5
    with EventLog(log_path, max_bytes=200, keep=2) as log:
        for seq in range(100, 110):
            log.append("tick", seq=seq, ts=0.0)
    assert [n for n, _ in rotated_files(log_path)] == [1, 2]


def test_a_line_longer_than_max_bytes_is_written_whole(log_path: Path):
    with EventLog(log_path, max_bytes=100, keep=2) as log:
        log.append("small", ts=0.0)
        log.append("big", ts=0.0, message="x" * 500)
        log.append("small", ts=0.0)
    assert [e["event"] for e in read_events(log_path)] == ["small", "big", "small"]
    assert len(rotated_files(log_path)) == 2


WRITER = """
import sys
from pathlib import Path
from reconciler.eventlog import EventLog
path, writer, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with EventLog(path, max_bytes=int(sys.argv[4]), keep=int(sys.argv[5])) as log:
    for seq in range(count):
        if seq % 10 == 9:
            log.append_many([{"event": "burst", "unit": writer, "seq": seq}])
        else:
            log.append("tick", writer, seq=seq, padding="p" * (seq % 37))
"""


def run_writers(log_path: Path, processes: list, *, count: int, max_bytes: int, keep: int) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for writer in ("a", "b"):
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(log_path), writer, str(count), str(max_bytes), str(keep)],
                start_new_session=True,
            )
        )
    for proc in processes:
        assert proc.wait(timeout=60) == 0


def test_two_writer_processes_lose_and_split_no_line(log_path: Path, processes):
    count, max_bytes = 2000, 4096
    run_writers(log_path, processes, count=count, max_bytes=max_bytes, keep=1000)
    files = all_files(log_path)
    assert len(files) > 20  # it did rotate, many times, under contention
    seqs: dict[str, list[int]] = {"a": [], "b": []}
    for path in files:
        assert path.stat().st_size <= max_bytes
        for line in raw_lines(path):
            event = orjson.loads(line)  # every line is one whole event
            seqs[event["unit"]].append(event["seq"])
    assert seqs == {"a": list(range(count)), "b": list(range(count))}


def test_two_writer_processes_leave_exactly_keep_rotated_files(log_path: Path, processes):
    count = 1500
    run_writers(log_path, processes, count=count, max_bytes=2048, keep=4)
    assert [n for n, _ in rotated_files(log_path)] == [1, 2, 3, 4]
    seqs: dict[str, list[int]] = {"a": [], "b": []}
    for event in read_events(log_path):
        seqs[event["unit"]].append(event["seq"])
    # What is left is, per writer, a gap-free run ending at its last line (a
    # writer that finished early may have been rotated out altogether).
    kept = [writer_seqs for writer_seqs in seqs.values() if writer_seqs]
    assert kept
    for writer_seqs in kept:
        assert writer_seqs == list(range(count - len(writer_seqs), count))


def test_threads_sharing_one_writer_lose_no_line(log_path: Path):
    errors: list[BaseException] = []
    with EventLog(log_path, max_bytes=1024, keep=10_000) as log:

        def write(name: str) -> None:
            try:
                for seq in range(300):
                    log.append("tick", name, seq=seq, ts=0.0)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []
    for i in range(4):
        assert [e["seq"] for e in read_events(log_path, unit=f"t{i}")] == list(range(300))


# --- reading -------------------------------------------------------------------


def test_read_events_goes_oldest_first_across_rotated_files(log_path: Path):
    with EventLog(log_path, max_bytes=150, keep=50) as log:
        for seq in range(40):
            log.append("tick", seq=seq, ts=0.0)
    assert len(rotated_files(log_path)) > 5
    assert [e["seq"] for e in read_events(log_path)] == list(range(40))


def test_read_events_filters_by_unit(log_path: Path):
    with EventLog(log_path, max_bytes=150, keep=50) as log:
        for seq in range(30):
            log.append("tick", ["web", "db", None][seq % 3], seq=seq, ts=0.0)
    assert [e["seq"] for e in read_events(log_path, unit="db")] == list(range(1, 30, 3))


def test_read_events_of_a_missing_log_is_empty(tmp_path: Path):
    assert list(read_events(tmp_path / "nothing" / "events.jsonl")) == []
    assert not (tmp_path / "nothing").exists()


def test_a_torn_last_line_is_skipped_and_the_next_line_stands_alone(log_path: Path):
    with EventLog(log_path) as log:
        log.append("first", ts=0.0)
    with open(log_path, "ab") as file:
        file.write(b'{"ts":"1970-01-01T00:00:00.000Z","ev')
    assert [e["event"] for e in read_events(log_path)] == ["first"]
    with EventLog(log_path) as log:
        log.append("second", ts=0.0)
    assert [e["event"] for e in read_events(log_path)] == ["first", "second"]


# --- following -----------------------------------------------------------------


def test_follow_from_start_reads_across_several_rotations_between_polls(log_path: Path):
    log = EventLog(log_path, max_bytes=200, keep=10)
    log.append("tick", seq=0, ts=0.0)
    events = follow(log_path, from_start=True, poll_interval=0.001)
    try:
        assert next(events)["seq"] == 0
        rotations_before = len(rotated_files(log_path))
        for seq in range(1, 30):  # while the follower is paused: several rotations
            log.append("tick", seq=seq, ts=0.0)
        assert len(rotated_files(log_path)) >= rotations_before + 3
        assert [next(events)["seq"] for _ in range(29)] == list(range(1, 30))
        log.append("tick", seq=30, ts=0.0)
        assert next(events)["seq"] == 30
    finally:
        events.close()
        log.close()


def test_follow_survives_a_rotation_that_deletes_the_file(log_path: Path):
    log = EventLog(log_path, max_bytes=200, keep=0)  # three 58-byte lines fit in a file
    log.append("tick", seq=0, ts=0.0)
    events = follow(log_path, from_start=True, poll_interval=0.001)
    try:
        assert next(events)["seq"] == 0
        old_inode = log_path.stat().st_ino
        for seq in range(1, 5):
            log.append("tick", seq=seq, ts=0.0)
        assert log_path.stat().st_ino != old_inode and rotated_files(log_path) == []
        assert [next(events)["seq"] for _ in range(4)] == [1, 2, 3, 4]
    finally:
        events.close()
        log.close()


def test_follow_without_from_start_yields_only_new_events_of_the_unit(log_path: Path):
    log = EventLog(log_path, max_bytes=10_000, keep=2)
    log.append("old", "web", ts=0.0)
    following, done = threading.Event(), threading.Event()
    received: queue.Queue = queue.Queue()

    def stop() -> bool:
        following.set()  # first asked once the log is open and positioned at its end
        return done.is_set()

    def consume() -> None:
        for event in follow(log_path, unit="web", stop=stop, poll_interval=0.005):
            received.put(event["event"])

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        assert following.wait(timeout=10)
        log.append("first", "web", ts=0.0)
        log.append("other", "db", ts=0.0)
        log.append("second", "web", ts=0.0)
        seen = [received.get(timeout=10), received.get(timeout=10)]
    finally:
        done.set()
        thread.join(timeout=10)
        log.close()
    assert not thread.is_alive()
    assert seen == ["first", "second"]
    assert received.empty()


def test_follow_waits_for_a_log_that_does_not_exist_yet(log_path: Path):
    following, done = threading.Event(), threading.Event()
    received: queue.Queue = queue.Queue()

    def stop() -> bool:
        following.set()
        return done.is_set()

    def consume() -> None:
        for event in follow(log_path, stop=stop, poll_interval=0.005):
            received.put(event["event"])

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        assert following.wait(timeout=10)
        assert not log_path.exists()
        with EventLog(log_path) as log:
            log.append("reconciler.started", ts=0.0)
        assert received.get(timeout=10) == "reconciler.started"
    finally:
        done.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_follow_keeps_up_with_a_writer_process_that_rotates(log_path: Path, processes):
    stop = threading.Event()
    received: list[dict] = []
    log_path.parent.mkdir(parents=True)

    def consume() -> None:
        received.extend(follow(log_path, stop=stop.is_set, from_start=True, poll_interval=0.005))

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(log_path), "a", "800", "1024", "10000"],
                start_new_session=True,
            )
        )
        assert processes[0].wait(timeout=60) == 0
        assert len(rotated_files(log_path)) > 10
        wait_until(lambda: len(received) >= 800)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [event["seq"] for event in received] == list(range(800))
