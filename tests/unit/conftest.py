"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest


@pytest.fixture
def processes():
    """Processes a test starts (in their own group); killed, whole group, if alive at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
