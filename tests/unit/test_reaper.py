"""The reaper and spawns in worker threads: no exit status is lost between a spawn and its pidfd."""

from __future__ import annotations

import contextlib
import os

import anyio
import pytest

from reconciler.driver import spawning
from reconciler.reaper import Reaper
from tests.drivers.conftest import wait_until

pytestmark = pytest.mark.anyio


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return False


async def test_a_child_that_exits_during_a_spawn_is_reaped_only_after_it():
    reaper = Reaper()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reaper.run)
        with spawning():
            pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
            try:
                await wait_until(lambda: _zombie(pid), what="the child to exit")
                reaper.reap_all()  # as on its SIGCHLD: held off
                assert _zombie(pid)
            except BaseException:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                raise
        # The spawn is over: the held-off reap happens without another child exiting.
        await wait_until(lambda: not os.path.exists(f"/proc/{pid}"), what="the held-off reap")
        tg.cancel_scope.cancel()
