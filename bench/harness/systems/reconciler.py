"""The system under test: `reconciler run` over a specs directory."""

from __future__ import annotations

import os
import subprocess
import time

from .base import System, Tools, environ


def spec_text(name: str, sleep: str, arg: str) -> str:
    return (
        f'name = "{name}"\n'
        f'command = ["{sleep}", "{arg}"]\n'
        "\n[restart]\n"
        'backoff_initial = "0s"\n'
    )


class Reconciler(System):
    name = "reconciler"
    how = (
        'one TOML spec per unit, `[restart] backoff_initial = "0s"`; `reconciler run --stop-on-exit`; '
        "add one = spec written beside as `.tmp`, then renamed into place (no other trigger)"
    )

    @classmethod
    def unavailable(cls, tools: Tools) -> str | None:
        exe = tools.exe("reconciler")
        if exe is None:
            return "no `reconciler` executable"
        probe = subprocess.run([exe, "--help"], capture_output=True)
        return None if probe.returncode == 0 else f"`reconciler --help` failed: {probe.stderr.decode()[-300:]}"

    @classmethod
    def version(cls, tools: Tools) -> str:
        out = subprocess.run([tools.exe("reconciler"), "--version"], capture_output=True, text=True)
        version = (out.stdout or out.stderr).strip().splitlines()[-1] if out.returncode == 0 else "unknown"
        return f"{version}, {cls.spawn_build(tools)}"

    @staticmethod
    def spawn_build(tools: Tools) -> str:
        """Whether the install built the posix driver's direct start in C (it needs a compiler)."""
        probe = subprocess.run([tools.python, "-c", "import reconciler_drivers._compiled_spawn"], capture_output=True)
        return "the posix driver's spawn compiled" if probe.returncode == 0 else "the posix driver's spawn in Python (not compiled)"

    def __init__(self, tools: Tools, workdir, prefix: str) -> None:
        super().__init__(tools, workdir, prefix)
        self.specs = workdir / "specs"
        self.state = workdir / "state"
        self.specs.mkdir()
        self.env = environ(RECONCILER_SPECS=str(self.specs), RECONCILER_STATE=str(self.state))

    def define(self, name: str, arg: str) -> None:
        (self.specs / f"{name}.toml").write_text(spec_text(name, self.tools.sleep, arg))

    def command(self, *args: str) -> list[str]:
        return [self.tools.exe("reconciler"), *args]

    def start(self) -> int:
        return self.spawn(self.command("run", "--stop-on-exit"))

    def add(self) -> tuple[str, int]:
        name, arg = self.new_unit()
        final = self.specs / f"{name}.toml"
        staged = final.with_name(final.name + ".tmp")  # an ignored name until the rename
        staged.write_text(spec_text(name, self.tools.sleep, arg))
        t0 = time.monotonic_ns()
        os.rename(staged, final)
        return arg, t0

    def status_command(self) -> list[str] | None:
        return self.command("status", "--json")
