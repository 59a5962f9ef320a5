"""The reaper and spawns in worker threads: no exit status is lost between a spawn and its pidfd."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

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


async def test_a_flood_of_signals_to_the_daemon_prints_no_warning(tmp_path, monkeypatch):
    """A thousand units exiting at once fill the event loop's wake-up buffer; that is no news."""
    from reconciler.loop import Reconciler
    from reconciler.settings import Settings
    from reconciler.statedir import ensure_state_dir

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    (tmp_path / "specs").mkdir()
    settings = Settings(tmp_path / "specs", tmp_path / "state")
    ensure_state_dir(settings.state_dir)
    reconciler = Reconciler(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reconciler.run)
        await wait_until(lambda: reconciler.last_pass is not None, what="the first pass")
        for _ in range(5000):  # far more bytes than the wake-up socket holds, sent without yielding
            os.kill(os.getpid(), signal.SIGCHLD)
        reconciler.stopping = True
        reconciler.poke()
    # CPython prints its own header line, then hands the write's error to the hook.
    assert not [u for u in unraisable if issubclass(u.exc_type, BlockingIOError)], unraisable[:1]
