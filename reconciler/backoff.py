"""Restart policy arithmetic: pure functions, no clock reads."""

from __future__ import annotations

from .model import RestartPolicy, RestartSettings


def restart_delay(failures: int, settings: RestartSettings) -> float:
    """Delay before the restart that follows the `failures`-th consecutive failure.

    The first failure waits `backoff_initial`; each further one doubles it, capped
    at `backoff_max`.
    """
    if failures <= 1:
        return min(settings.backoff_initial, settings.backoff_max)
    # Cap the exponent: 2**1000 would overflow a float long before it matters.
    return min(settings.backoff_initial * 2 ** min(failures - 1, 64), settings.backoff_max)


def failures_after_exit(previous: int, ran_for: float | None, settings: RestartSettings) -> int:
    """Consecutive failures once a run has ended.

    A run that lasted at least `reset_after` proves the unit healthy again, so
    the count starts over at this exit.
    """
    if ran_for is not None and ran_for >= settings.reset_after:
        return 1
    return previous + 1


def wants_restart(policy: RestartPolicy, exit_code: int | None, exit_signal: int | None) -> bool:
    """Does the restart policy call for another run after this exit?

    An unknown exit status counts as a failure: we never assume success.
    """
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.NEVER:
        return False
    return not (exit_code == 0 and exit_signal is None)


def gave_up(failures: int, settings: RestartSettings) -> bool:
    """True once `max_retries` consecutive failures have happened (0 = never give up)."""
    return settings.max_retries > 0 and failures >= settings.max_retries
