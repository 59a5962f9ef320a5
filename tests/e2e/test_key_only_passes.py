"""Key-only passes inside one reconciler, driven step by step: no twin of a unit, whatever the order."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import AsyncIterator

import anyio
import pytest

from reconciler.loop import Reconciler
from reconciler.settings import Settings
from reconciler.statedir import ensure_state_dir
from tests.conftest import kill_tagged, pids_tagged
from tests.drivers.conftest import wait_until

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def reconciler_with_no_units(tmp_path: Path, tag: str, **settings: int) -> AsyncIterator[Reconciler]:
    """A reconciler whose first pass has run (the memory a key-only pass starts from), driven by the test."""
    (tmp_path / "specs").mkdir()
    config = Settings(tmp_path / "specs", tmp_path / "state", **settings)
    ensure_state_dir(config.state_dir)
    reconciler = Reconciler(config)
    try:
        async with anyio.create_task_group() as tg:
            reconciler._task_group = tg
            tg.start_soon(reconciler.reaper.run)
            await reconciler.run_pass()
            yield reconciler
            tg.cancel_scope.cancel()
    finally:
        kill_tagged(tag)
        await reconciler.drivers.aclose()
        reconciler.ledger.close()


def write_spec(tmp_path: Path, tag: str, argument: str) -> str:
    path = tmp_path / "specs" / "web.toml"
    path.write_text(f'command = ["sleep", "{argument}"]\nenv = {{ RECONCILER_TEST_TAG = "{tag}" }}\n')
    return str(path)


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
