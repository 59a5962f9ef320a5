"""Key-only passes inside one reconciler, driven step by step: no twin of a unit, whatever the order."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from reconciler.loop import Reconciler
from reconciler.settings import Settings
from reconciler.statedir import ensure_state_dir
from tests.conftest import kill_tagged, pids_tagged
from tests.drivers.conftest import wait_until

pytestmark = pytest.mark.anyio


async def test_a_second_key_only_pass_before_the_start_is_folded_in_starts_no_twin(tmp_path: Path):
    tag = uuid.uuid4().hex
    specs = tmp_path / "specs"
    specs.mkdir()
    settings = Settings(specs, tmp_path / "state")
    ensure_state_dir(settings.state_dir)
    reconciler = Reconciler(settings)
    try:
        async with anyio.create_task_group() as tg:
            reconciler._task_group = tg
            tg.start_soon(reconciler.reaper.run)
            await reconciler.run_pass()  # the memory a key-only pass starts from: no units yet
            path = specs / "web.toml"
            path.write_text(f'command = ["sleep", "4501"]\nenv = {{ RECONCILER_TEST_TAG = "{tag}" }}\n')

            await reconciler._pass_files({str(path)})
            # The start is done, but no whole pass has folded it into the unit's record yet.
            await wait_until(lambda: not reconciler._busy, what="the start to finish")
            await reconciler._pass_files({str(path)})  # e.g. the file's next event

            assert not reconciler._busy, "a second start was launched"
            assert len(pids_tagged(tag)) == 1
            tg.cancel_scope.cancel()
    finally:
        kill_tagged(tag)
        await reconciler.drivers.aclose()
        reconciler.ledger.close()
