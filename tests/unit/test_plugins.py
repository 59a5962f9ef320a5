"""Drivers' entry points remembered in the state directory: used while the installation is unchanged, only then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from reconciler import plugins
from reconciler.driver import load_driver_class

POSIX = "reconciler_drivers.posix:PosixDriver"


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def look_up_in_fresh_interpreter(tmp_path: Path, *path: Path) -> dict:
    """plugins.entry_points() in a new interpreter with `path` first on sys.path."""
    code = (
        f"import json, sys; sys.path[:0] = {[str(p) for p in path]!r}\n"
        "from reconciler import plugins\n"
        "found = plugins.entry_points()\n"
        "print(json.dumps({'found': found, 'metadata_imported': 'importlib.metadata' in sys.modules}))\n"
    )
    # In a directory of its own: sys.path starts with the working directory, whose changes count.
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return orjson.loads(out.stdout)


def test_a_second_run_finds_the_drivers_without_importlib_metadata(tmp_path: Path):
    first = look_up_in_fresh_interpreter(tmp_path)
    second = look_up_in_fresh_interpreter(tmp_path)
    assert first["found"]["posix"] == POSIX and first["metadata_imported"]
    assert second == {"found": first["found"], "metadata_imported": False}


def test_a_package_installed_since_is_found(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    before = look_up_in_fresh_interpreter(tmp_path, site)
    dist = site / "extra_driver-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-driver\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[reconciler.drivers]\nextra = extra_driver:Driver\n")
    after = look_up_in_fresh_interpreter(tmp_path, site)
    assert "extra" not in before["found"]
    assert after["found"]["extra"] == "extra_driver:Driver" and after["metadata_imported"]


def test_a_corrupt_cache_is_looked_past():
    cache = plugins.cache_file()
    cache.parent.mkdir(parents=True)
    cache.write_text('{"installation": [], "entry_points": {"posix": 1}')
    assert plugins.entry_points()["posix"] == POSIX
    assert orjson.loads(cache.read_bytes())["entry_points"]["posix"] == POSIX


def test_a_driver_the_cache_names_wrongly_is_looked_up_again():
    plugins.entry_points()
    cache = plugins.cache_file()
    stale = orjson.loads(cache.read_bytes())
    stale["entry_points"] = {"posix": "reconciler_drivers.gone:PosixDriver"}
    cache.write_bytes(orjson.dumps(stale))
    assert load_driver_class("posix").__module__ == "reconciler_drivers.posix"
    assert orjson.loads(cache.read_bytes())["entry_points"]["posix"] == POSIX


def test_a_cache_that_cannot_be_written_only_costs_a_lookup(cache_home: Path):
    cache_home.write_text("a file where the cache directory would be")
    assert plugins.entry_points()["posix"] == POSIX
