"""Starting the loop for `run` and `--once`: the state directory, its lock, the exit code."""

from __future__ import annotations

import functools
import gc
import logging
import os

import resource

import anyio

from .errors import LockHeld
from .loop import Reconciler
from .reaper import become_subreaper
from .settings import Settings
from .statedir import StateLock, ensure_state_dir

log = logging.getLogger(__name__)

EXIT_OK, EXIT_UNSETTLED = 0, 3


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: drivers hold a descriptor per live unit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_daemon(settings: Settings) -> int:
    """Reconcile until SIGTERM/SIGINT. Raises LockHeld if another reconciler owns the state."""
    ensure_state_dir(settings.state_dir)
    lock = StateLock(settings.lock_path)
    lock.acquire()
    try:
        # Orphaned grandchildren of our units reparent to us, and we reap them.
        become_subreaper()
        raise_fd_limit()
        log.warning("watching %s, state in %s (pid %d)", settings.specs_dir, settings.state_dir, os.getpid())
        reconciler = Reconciler(settings)
        anyio.run(functools.partial(reconciler.run, once=False, settled=collect_garbage_from_now_on))
    finally:
        lock.release()
    return EXIT_OK


def collect_garbage_from_now_on() -> None:
    """The collector, off since the command started (entry.py), is turned on once the first
    pass's starts are done: collecting while it read the specs and started their units cost a
    cold start about 6 ms at 500 units, 12 at 1000. What is alive by then (modules, ledger,
    specs) lives as long as the daemon, so collections need not walk it."""
    gc.freeze()
    gc.enable()


def run_once(settings: Settings) -> int:
    """One pass from cron: 0 converged, 3 something failed/backing off/invalid.

    If a daemon holds the state directory, it is already reconciling: do nothing.
    """
    ensure_state_dir(settings.state_dir)
    lock = StateLock(settings.lock_path)
    try:
        lock.acquire()
    except LockHeld as exc:
        who = f"pid {exc.pid}" if exc.pid else "another reconciler"
        print(f"reconciler: {who} holds {settings.state_dir}; nothing done", flush=True)
        return EXIT_OK
    try:
        raise_fd_limit()
        reconciler = Reconciler(settings)
        anyio.run(functools.partial(reconciler.run, once=True))
    finally:
        lock.release()
        # The collector is off since the command started (entry.py); objects frozen here are
        # not walked again by the collection as the interpreter exits (~60-100 ms).
        gc.freeze()
    return EXIT_OK if reconciler.converged() else EXIT_UNSETTLED
