"""A whole pass that launched actions leaves its write to the next: nothing of it is lost."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from reconciler import loop
from reconciler.eventlog import read_events
from reconciler.model import UnitState
from tests.conftest import pids_tagged
from tests.drivers.conftest import wait_until
from tests.e2e.stepwise import reconciler_with_no_units, write_spec

pytestmark = pytest.mark.anyio


async def test_the_pass_that_launched_a_start_is_written_with_the_next_write(tmp_path: Path):
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag) as reconciler:
        ledger, events = reconciler.ledger, reconciler.settings.events_path
        passes_written = [e for e in read_events(events) if e["event"] == "pass.completed"]
        write_spec(tmp_path, tag, "4701")

        launched = await reconciler.run_pass()
        assert [a.kind for a in launched.plan.actions] == ["start"]
        assert "web" not in ledger.units(), "written while the start it launched was under way"

        await reconciler._drain()  # what a stop does; otherwise the next pass writes

        record = ledger.units()["web"]
        assert record.state is UnitState.RUNNING and record.pid == pids_tagged(tag)[0]
        assert ledger.last_pass()["started_at"] == launched.started_at
        written = [e["event"] for e in read_events(events)]
        assert written.count("pass.completed") == len(passes_written) + 1
        assert {"spec.added", "unit.started"} <= set(written)
        assert reconciler.settings.specs_dir / "web.toml" in map(Path, ledger.spec_files())


async def test_a_pass_left_unwritten_is_written_at_the_latest_after_the_pacing_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(loop, "MAX_PACING", 0.2)
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag, concurrency=1) as reconciler:
        write_spec(tmp_path, tag, "4702")
        await reconciler._limiter.acquire()  # the start it launches stays in flight, and pokes no one
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(reconciler._serve)

                await wait_until(lambda: "web" in reconciler.ledger.units(), what="the write")
                record = reconciler.ledger.units()["web"]
                assert record.state is UnitState.STARTING and reconciler._busy

                reconciler.stopping = True
                reconciler.poke()
        finally:
            reconciler._limiter.release()
        await reconciler._drain()
