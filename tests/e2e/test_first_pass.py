"""The spec directory is watched only once the first pass's starts are done: nothing changed before is missed."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import anyio
import pytest

from reconciler.loop import Reconciler
from reconciler.settings import Settings
from reconciler.statedir import ensure_state_dir
from tests.conftest import kill_tagged, pids_tagged
from tests.drivers.conftest import wait_until
from tests.e2e.stepwise import reconciler_with_no_units, write_spec

pytestmark = pytest.mark.anyio


async def test_a_spec_written_before_the_watch_is_set_is_started_without_waiting_for_the_resync(tmp_path: Path):
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag, resync_interval=3600) as reconciler:
        start_watching = reconciler._start_watching

        def change_then_watch() -> None:
            write_spec(tmp_path, tag, "4801")  # read by no pass yet, and no watch to see it
            start_watching()

        reconciler._start_watching = change_then_watch
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reconciler._serve)
            await wait_until(lambda: pids_tagged(tag), what="the unit of the spec written before the watch")
            reconciler.stopping = True
            reconciler.poke()
        await reconciler._drain()


async def test_a_daemon_is_told_it_has_settled_once_its_first_pass_has_started_its_units(tmp_path: Path):
    tag = uuid.uuid4().hex
    (tmp_path / "specs").mkdir()
    write_spec(tmp_path, tag, "4802")
    settings = Settings(tmp_path / "specs", tmp_path / "state", resync_interval=3600)
    ensure_state_dir(settings.state_dir)
    reconciler = Reconciler(settings)
    running_when_settled: list[list[int]] = []
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(functools.partial(reconciler.run, settled=lambda: running_when_settled.append(pids_tagged(tag))))
            await wait_until(lambda: running_when_settled, what="the daemon to settle")
            reconciler.stopping = True
            reconciler.poke()
    finally:
        kill_tagged(tag)
    assert len(running_when_settled) == 1 and running_when_settled[0], running_when_settled
