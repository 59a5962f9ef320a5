"""The installed drivers' entry points, remembered from one run to the next.

Importing importlib.metadata costs 20-30 ms (it reads package metadata with the
email package), and every daemon start, `--once` and `status` paid it before
its first action. As stevedore does, what a lookup found is kept in the user's
cache directory (one file per Python installation), keyed by the directories
on sys.path with their modification times and link counts: installing,
upgrading or removing a package adds or removes a `.dist-info` directory in one
of them, and the next run looks again. A cache that cannot be read, written or
used is looked past.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

import orjson

GROUP = "reconciler.drivers"


def entry_points(*, fresh: bool = False) -> dict[str, str]:
    """Name -> "module:attribute" of each installed driver; `fresh` looks past the cache."""
    installation = _installation()
    path = cache_file()
    if path is not None and not fresh:
        cached = _read(path)
        if cached is not None and cached.get("installation") == installation:
            return cached["entry_points"]
    from importlib.metadata import entry_points as look_up

    found = {ep.name: ep.value for ep in look_up(group=GROUP)}
    if path is not None:
        _write(path, {"installation": installation, "entry_points": found})
    return found


def cache_file() -> Path | None:
    """$XDG_CACHE_HOME/reconciler/drivers-<installation>.json (~/.cache when unset); None without a home."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:
        return None
    prefix = hashlib.sha256(os.fsencode(sys.prefix)).hexdigest()[:16]
    return base / "reconciler" / f"drivers-{prefix}.json"


def load(value: str) -> Any:
    """The object an entry point's value names: "module:attribute", maybe with [extras]."""
    return pkgutil.resolve_name(value.split("[", 1)[0].replace(" ", ""))


def _installation() -> list[Any]:
    """What decides which packages are installed: sys.path, and the state of each directory on it."""
    state: list[Any] = []
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
        except OSError:
            state.append([entry])
        else:
            state.append([entry, st.st_mtime_ns, st.st_nlink])
    return state


def _read(path: Path) -> dict[str, Any] | None:
    try:
        cached = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or not isinstance(cached.get("entry_points"), dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in cached["entry_points"].items()):
        return None
    return cached


def _write(path: Path, content: dict[str, Any]) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged.write_bytes(orjson.dumps(content))
        os.replace(staged, path)
    except OSError:  # no cache we may write (a read-only home): looked up each time
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)
