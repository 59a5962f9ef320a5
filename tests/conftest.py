"""Shared test helpers: waiting on conditions with a deadline, and killing what a test started."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def pids_tagged(tag: str) -> list[int]:
    """Processes whose environment carries `RECONCILER_TEST_TAG=tag` (everything a test spawned)."""
    needle = f"RECONCILER_TEST_TAG={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying the tag, and wait until they are gone."""
    def alive() -> list[int]:
        pids = pids_tagged(tag)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return [p for p in pids if _is_alive(p)]

    wait_until(lambda: not alive(), timeout=10, what=f"processes tagged {tag} to die")


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def proc_alive(pid: int | None) -> bool:
    return pid is not None and _is_alive(pid)


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


def write_spec(directory: Path, name: str, text: str) -> Path:
    """Write a spec atomically (rename into place), as an editor or git checkout would."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
