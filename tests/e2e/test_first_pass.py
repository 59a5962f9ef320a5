"""The spec directory is watched only once the first pass's starts are done: nothing changed before is missed."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from tests.conftest import pids_tagged
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
