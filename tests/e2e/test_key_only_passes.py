"""Key-only passes inside one reconciler, driven step by step: no twin of a unit, whatever the order."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import pids_tagged
from tests.drivers.conftest import wait_until
from tests.e2e.stepwise import reconciler_with_no_units, write_spec

pytestmark = pytest.mark.anyio


async def test_a_second_key_only_pass_before_the_start_is_folded_in_starts_no_twin(tmp_path: Path):
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag) as reconciler:
        path = write_spec(tmp_path, tag, "4501")

        await reconciler._pass_files({path})
        # The start is done, but no whole pass has folded it into the unit's record yet.
        await wait_until(lambda: not reconciler._busy, what="the start to finish")
        await reconciler._pass_files({path})  # e.g. the file's next event

        assert not reconciler._busy, "a second start was launched"
        assert len(pids_tagged(tag)) == 1


async def test_a_start_that_finishes_while_a_pass_observes_is_not_started_again(tmp_path: Path):
    tag = uuid.uuid4().hex
    async with reconciler_with_no_units(tmp_path, tag, concurrency=1) as reconciler:
        observe = reconciler.drivers.observe

        async def observe_while_the_start_finishes(handles):
            reconciler._limiter.release()
            await wait_until(lambda: not reconciler._busy, what="the start to finish")
            return await observe(handles)

        path = write_spec(tmp_path, tag, "4502")
        await reconciler._limiter.acquire()  # the start waits for its turn ...
        await reconciler._pass_files({path})
        reconciler.drivers.observe = observe_while_the_start_finishes  # ... until the whole pass observes

        decided = (await reconciler.run_pass()).plan
        await reconciler._drain()

        assert not decided.actions, "a second start was launched"
        assert len(pids_tagged(tag)) == 1
