"""The layering rules hold: the core never imports a driver; drivers see only driver/model/errors."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_posix_driver_is_found_through_its_entry_point():
    from reconciler.driver import driver_names, load_driver_class

    assert "posix" in driver_names()
    assert load_driver_class("posix").__module__ == "reconciler_drivers.posix"
