"""One reconciler inside the test's own event loop, driven pass by pass."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

import anyio

from reconciler.loop import Reconciler
from reconciler.settings import Settings
from reconciler.statedir import ensure_state_dir
from tests.conftest import kill_tagged


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
