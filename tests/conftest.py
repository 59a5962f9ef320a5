"""Shared test helpers: waiting on conditions with a deadline, and killing what a test started."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

T = TypeVar("T")


@pytest.fixture(autouse=True, scope="session")
def _cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The drivers' entry-point cache (reconciler/plugins.py) of every reconciler the tests run: not in the home."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = saved


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
    return _scan(tag)[0]


def _scan(tag: str) -> tuple[list[int], bool]:
    """The processes tagged `tag`, and whether some process was caught in the middle of an exec.

    posix_spawn returns once the exec is past its point of no return, a moment
    before the kernel publishes the new command line and environment: until then
    both read empty, and a process just started is not yet seen to carry its tag.
    """
    needle = f"RECONCILER_TEST_TAG={tag}".encode()
    found, mid_exec = [], False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
        elif not environ and not mid_exec:
            mid_exec = _is_execing(int(entry.name))
    return found, mid_exec


def kill_tagged(tag: str) -> None:
    """SIGKILL every process carrying the tag, and wait until they are gone."""
    def left() -> bool:
        pids, mid_exec = _scan(tag)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return mid_exec or any(map(_is_alive, pids))

    wait_until(lambda: not left(), timeout=10, what=f"processes tagged {tag} to die")


PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread (its environment is always empty)
EXEC_WINDOW = 5.0  # seconds: a process this young with an empty environment is mid-exec, not started with none


def _is_execing(pid: int) -> bool:
    """Whether a process with an empty environment is a young user process (not a zombie or kernel thread)."""
    fields = process_stat(pid)
    if fields is None:
        return False
    with open("/proc/uptime", "rb") as f:
        uptime = float(f.read().split()[0])
    age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0] != "Z" and not int(fields[6]) & PF_KTHREAD and age < EXEC_WINDOW


def _is_alive(pid: int) -> bool:
    fields = process_stat(pid)
    return fields is not None and fields[0] != "Z"


def process_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, onwards); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


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
