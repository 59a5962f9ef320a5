"""Carrying out one action through the drivers. The only place the loop's decisions touch the OS."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .driver import DriverSet, Launch
from .errors import DriverError, DriverUnavailable
from .logs import log_paths
from .memory import Outcome
from .model import Handle, Observation, ProcessState, StopSettings
from .plan import RESTART, START, STOP, Action


async def carry_out(
    action: Action,
    handle: Handle | None,
    stop: StopSettings,
    drivers: DriverSet,
    state_dir: Path,
    clock: Callable[[], float] = time.time,
    *,
    resident: bool = False,
    signalled: bool = False,
) -> Outcome:
    """Stop, start or restart (stop then start) one unit; never raises for expected failures.

    `handle` is the running process to stop and `stop` the settings it was
    started with (a restart stops the old process by the old rules).
    `resident`: a daemon that stays up to watch the unit is starting it (see Launch).
    `signalled`: the stop signal was already sent (Driver.begin_stop).
    """
    stopped = None
    if action.kind in (STOP, RESTART):
        if handle is None:
            stopped = Observation(ProcessState.GONE)
        else:
            try:
                stopped = await drivers.get(handle.driver).stop(handle, stop.signal, stop.timeout, signalled=signalled)
            except (DriverError, DriverUnavailable) as exc:
                return Outcome(action, clock(), error=f"stop failed: {exc}")
        if action.kind == STOP:
            return Outcome(action, clock(), stopped=stopped)
    if action.kind not in (START, RESTART):
        return Outcome(action, clock())
    spec = action.spec
    assert spec is not None, "start and restart actions carry the spec to run"
    out, err = log_paths(state_dir, spec.name)
    try:
        new = await drivers.get(spec.driver).start(Launch(spec, out, err, resident=resident))
    except DriverUnavailable as exc:
        return Outcome(action, clock(), stopped=stopped, error=str(exc), permanent=True)
    except DriverError as exc:
        return Outcome(action, clock(), stopped=stopped, error=str(exc), permanent=not exc.transient)
    return Outcome(action, clock(), handle=new, stopped=stopped)
