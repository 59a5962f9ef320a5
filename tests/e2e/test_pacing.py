"""Pacing in a burst holds the next pass back, but never past the burst's end or a stop."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from reconciler import loop
from reconciler.loop import PassResult, Reconciler
from tests.e2e.stepwise import reconciler_with_no_units, write_spec

pytestmark = pytest.mark.anyio

DEADLINE = 10.0  # seconds; the pacing asked for below is an hour


async def start_held_back(reconciler: Reconciler, tmp_path: Path, tag: str) -> PassResult:
    """A start in flight (waiting for the limiter), and a last pass that asks for an hour's pacing."""
    await reconciler._limiter.acquire()
    await reconciler._pass_files({write_spec(tmp_path, tag, "4601")})
    assert reconciler._busy
    last = reconciler.last_pass
    assert last is not None
    return PassResult(last.plan, started_at=0.0, finished_at=3600.0, problems=())


async def test_the_end_of_the_burst_ends_the_pacing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(loop, "MAX_PACING", 3600.0)
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag, concurrency=1) as reconciler:
        last = await start_held_back(reconciler, tmp_path, tag)
        reconciler._limiter.release()  # the start goes ahead and finishes

        with anyio.fail_after(DEADLINE):
            await reconciler._pace(last)
        assert not reconciler._busy


async def test_a_stop_ends_the_pacing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(loop, "MAX_PACING", 3600.0)
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag, concurrency=1) as reconciler:
        last = await start_held_back(reconciler, tmp_path, tag)
        reconciler.stopping = True  # what SIGTERM does (_handle_signals)
        reconciler.poke()

        with anyio.fail_after(DEADLINE):
            await reconciler._pace(last)
        assert reconciler._busy, "the start was still in flight: the stop, not its end, ended the pacing"
        reconciler._limiter.release()
        await reconciler._drain()
