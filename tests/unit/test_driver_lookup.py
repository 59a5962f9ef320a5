"""Drivers are found through their entry points, as importlib.metadata finds them, without importing it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from reconciler.driver import ENTRY_POINT_GROUP, _declared_entry_point, driver_names, load_driver_class
from reconciler.errors import DriverUnavailable

DRIVER_MODULE = """
from reconciler.driver import Driver

class FakeDriver(Driver):
    name = "{name}"

    async def start(self, launch): raise NotImplementedError
    async def stop(self, handle, signal, timeout): raise NotImplementedError
    async def observe(self, handles): return {{}}
    async def wait(self, handle): return None

NOT_A_DRIVER = object()
"""


def distribution(root: Path, dist: str, entries: str) -> None:
    """A distribution's metadata directory, as pip leaves it in site-packages."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entries)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh driver module on sys.path; yields (directory, module name, driver name)."""
    module = f"fake_driver_{uuid.uuid4().hex[:8]}"
    name = f"fake-{module[-8:]}"
    (tmp_path / f"{module}.py").write_text(DRIVER_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, module, name
    sys.modules.pop(module, None)


def test_the_lookup_agrees_with_importlib_metadata():
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert "posix" in installed
    assert {name: _declared_entry_point(name) for name in installed} == installed


def test_a_driver_of_another_distribution_is_found(plugin):
    root, module, name = plugin
    entries = f"[console_scripts]\n{name} = nope:nope\n\n[{ENTRY_POINT_GROUP}]\n# a comment\n{name} = {module}:FakeDriver\n"
    distribution(root, "fake-drivers", entries)
    cls = load_driver_class(name)
    assert cls.__module__ == module and cls.name == name
    assert name in driver_names()


def test_the_first_distribution_on_the_path_wins_as_with_importlib(plugin, tmp_path_factory, monkeypatch):
    root, module, name = plugin
    later = tmp_path_factory.mktemp("later")
    distribution(root, "first", f"[{ENTRY_POINT_GROUP}]\n{name} = {module}:FakeDriver\n")
    distribution(later, "second", f"[{ENTRY_POINT_GROUP}]\n{name} = {module}:NOT_A_DRIVER\n")
    monkeypatch.syspath_prepend(str(root))  # root before later
    sys.path.insert(sys.path.index(str(root)) + 1, str(later))
    try:
        first = next(ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name)
        assert _declared_entry_point(name) == first.value == f"{module}:FakeDriver"
    finally:
        sys.path.remove(str(later))


def test_an_entry_point_that_is_not_a_driver_is_refused(plugin):
    root, module, name = plugin
    distribution(root, "bad-drivers", f"[{ENTRY_POINT_GROUP}]\n{name} = {module}:NOT_A_DRIVER\n")
    with pytest.raises(DriverUnavailable, match="is not a Driver"):
        load_driver_class(name)


def test_an_unknown_driver_names_the_installed_ones():
    with pytest.raises(DriverUnavailable, match=r"'nosuch' is not installed \(installed: .*posix"):
        load_driver_class("nosuch")


def test_finding_the_posix_driver_does_not_import_importlib_metadata():
    """Its import alone is a tenth of a `--once` with nothing to do."""
    code = (
        "import sys\n"
        "from reconciler.driver import load_driver_class\n"
        "assert load_driver_class('posix').__module__ == 'reconciler_drivers.posix'\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
