"""Where things live and how the loop behaves: resolved once from flags and environment."""

from __future__ import annotations

import os
from pathlib import Path

import attrs


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/reconciler, or /var/lib/reconciler for root (the contract's defaults)."""
    if os.geteuid() == 0:
        return Path("/var/lib/reconciler")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "reconciler"


@attrs.frozen
class Settings:
    specs_dir: Path
    state_dir: Path
    driver: str = "auto"
    # inotify and pidfds are the triggers; the resync only repairs what an event could have missed.
    resync_interval: float = 300.0
    allow_insecure_specs: bool = False
    events_max_bytes: int = 10 * 1024 * 1024
    events_keep: int = 5
    concurrency: int = 64  # actions carried out at once
    stop_on_exit: bool = False

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.db"

    @property
    def events_path(self) -> Path:
        return self.state_dir / "events.jsonl"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    def trusted_uids(self) -> frozenset[int] | None:
        """Owners a spec file may have when running as root (sshd StrictModes); None: no check."""
        if self.allow_insecure_specs or os.geteuid() != 0:
            return None
        return frozenset({0, os.geteuid()})
