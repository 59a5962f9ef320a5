"""WrittenFiles: which files of a directory were written since last asked, from the kernel's inotify queue."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from reconciler.written import WrittenFiles


def test_only_files_written_since_the_last_take_are_named(tmp_path: Path):
    (tmp_path / "idle.out").write_bytes(b"old\n")
    written = WrittenFiles(str(tmp_path))
    try:
        assert written.take() is None  # nothing is known before the watch: look at everything once
        assert written.take() == set()
        # Written by another process, as a unit writes its log; twice, merged into one name.
        subprocess.run(["sh", "-c", f"echo a >> {tmp_path}/web.out; echo b >> {tmp_path}/web.out"], check=True)
        with open(tmp_path / "web.err", "ab") as f:
            f.write(b"oops\n")
        assert written.take() == {"web.out", "web.err"}
        assert written.take() == set()
    finally:
        written.close()


def test_a_replaced_directory_makes_the_answer_unknown_then_watched_again(tmp_path: Path):
    logs = tmp_path / "logs"
    logs.mkdir()
    written = WrittenFiles(str(logs))
    try:
        assert written.take() is None
        shutil.rmtree(logs)
        logs.mkdir()
        assert written.take() is None  # the old watch is gone
        assert written.take() is None  # watching the new directory from here on
        (logs / "x.out").write_bytes(b"1\n")
        assert written.take() == {"x.out"}
    finally:
        written.close()


def test_a_missing_directory_is_unknown_not_an_error(tmp_path: Path):
    written = WrittenFiles(str(tmp_path / "not-yet"))
    try:
        assert written.take() is None
        assert written.take() is None
    finally:
        written.close()
