"""A reconciler under test: temp specs and state directories, the real CLI, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import kill_tagged, wait_until, write_spec


class Harness:
    def __init__(self, root: Path) -> None:
        self.specs = root / "specs"
        self.state = root / "state"
        self.specs.mkdir()
        self.tag = uuid.uuid4().hex
        self.env = {
            **os.environ,
            "RECONCILER_SPECS": str(self.specs),
            "RECONCILER_STATE": str(self.state),
            "RECONCILER_TEST_TAG": self.tag,
        }
        self.daemons: list[subprocess.Popen] = []

    def cli(self, *args: str, check: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
        return proc

    def spec(self, name: str, text: str) -> Path:
        return write_spec(self.specs, name, text)

    def start_daemon(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.daemons.append(proc)
        wait_until(lambda: self.events("reconciler.started") or proc.poll() is not None, what="daemon start")
        assert proc.poll() is None, proc.communicate()
        return proc

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json", check=0)
        return orjson.loads(out.stdout)

    def unit(self, name: str) -> dict[str, Any] | None:
        return next((u for u in self.status()["units"] if u["name"] == name), None)

    def wait_unit(self, name: str, timeout: float = 15, **want: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            unit = self.unit(name)
            return unit if unit and all(unit.get(k) == v for k, v in want.items()) else None

        return wait_until(matches, timeout=timeout, interval=0.05, what=f"{name} with {want}")

    def events(self, name: str | None = None, unit: str | None = None) -> list[dict[str, Any]]:
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        found = []
        for file in sorted(self.state.glob("events.jsonl.*"), reverse=True) + [path]:
            for line in file.read_bytes().splitlines():
                event = orjson.loads(line)
                if (name is None or event["event"] == name) and (unit is None or event.get("unit") == unit):
                    found.append(event)
        return found

    def cleanup(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
        kill_tagged(self.tag)


@pytest.fixture
def rc(tmp_path: Path):
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()
