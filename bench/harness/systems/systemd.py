"""Peer: a real systemd user manager, in a private mount namespace (no booted systemd here).

run.py re-executes the whole harness under `unshare -m --propagation private`
when systemd is to be measured; `prepare_namespace` then mounts a private /run so
the manager believes it was booted, and each instance gets its own runtime
directory, its own unit directory and its own cgroup (the Fence), so it cannot
touch anything outside the benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .. import procfs
from .base import System, Tools, environ

NAMESPACE_MARK = "RECONCILER_BENCH_NAMESPACE"

UNIT = """\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart={sleep} {arg}
Restart=always
RestartSec=0
StandardOutput=append:{work}/logs/{name}.out
StandardError=append:{work}/logs/{name}.err
"""

TARGET = "[Unit]\nDescription=all benchmark units\n"


def in_namespace() -> bool:
    return os.environ.get(NAMESPACE_MARK) == "1"


def unshare_argv(argv: list[str]) -> list[str]:
    """The command line that runs `argv` in a private mount namespace (same pid: unshare execs)."""
    return [shutil.which("unshare") or "unshare", "-m", "--propagation", "private", "--", *argv]


def prepare_namespace() -> None:
    """Make this (private) mount namespace look like a booted systemd host."""
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.makedirs("/run/systemd/system")


class Systemd(System):
    name = "systemd"
    how = (
        "`systemd --user` (a real user manager, one per run) with `--unit=bench.target`, which wants every "
        "unit; units `Restart=always`, `RestartSec=0`, `StartLimitIntervalSec=0`, output appended to a file "
        "per unit; add one = `systemd-run --user` with the same properties"
    )

    @classmethod
    def cannot_host(cls) -> str | None:
        """Why this machine cannot run a user manager for the benchmark, or None."""
        missing = [exe for exe in ("systemd-run", "systemctl", "unshare", "mount") if shutil.which(exe) is None]
        if not Path(cls.manager_exe()).exists():
            missing.insert(0, "systemd")
        if missing:
            return "not installed: " + ", ".join(missing)
        if os.geteuid() != 0:
            return "needs root (a user manager in a private mount namespace)"
        return None

    @classmethod
    def unavailable(cls, tools: Tools) -> str | None:
        if not in_namespace():
            return cls.cannot_host() or "the harness is not running in its private mount namespace"
        return cls.cannot_host()

    @classmethod
    def version(cls, tools: Tools) -> str:
        out = subprocess.run([cls.manager_exe(), "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0].strip()

    @staticmethod
    def manager_exe() -> str:
        return shutil.which("systemd") or "/usr/lib/systemd/systemd"

    def __init__(self, tools: Tools, workdir, prefix: str) -> None:
        super().__init__(tools, workdir, prefix)
        self.unit_dir = workdir / "config" / "systemd" / "user"
        (self.unit_dir / "bench.target.wants").mkdir(parents=True)
        (self.unit_dir / "bench.target").write_text(TARGET)
        (workdir / "logs").mkdir()
        self.runtime = Path("/run/bench") / prefix
        self.runtime.mkdir(parents=True, mode=0o700)
        self.env = environ(XDG_RUNTIME_DIR=str(self.runtime), XDG_CONFIG_HOME=str(workdir / "config"))
        self.env.pop("DBUS_SESSION_BUS_ADDRESS", None)

    def unit_text(self, name: str, arg: str) -> str:
        return UNIT.format(sleep=self.tools.sleep, arg=arg, work=self.workdir, name=name)

    def define(self, name: str, arg: str) -> None:
        (self.unit_dir / f"{name}.service").write_text(self.unit_text(name, arg))
        (self.unit_dir / "bench.target.wants" / f"{name}.service").symlink_to(f"../{name}.service")

    def start(self) -> int:
        return self.spawn([self.manager_exe(), "--user", "--unit=bench.target"])

    def ready_for_changes(self, timeout: float) -> None:
        private = self.runtime / "systemd" / "private"
        procfs.wait_until(private.exists, timeout, "the user manager's private socket")

    def add(self) -> tuple[str, int]:
        name, arg = self.new_unit()
        argv = [
            shutil.which("systemd-run"), "--user", "--quiet", f"--unit={name}",
            "-p", "Restart=always", "-p", "RestartSec=0", "-p", "StartLimitIntervalSec=0",
            "-p", f"StandardOutput=append:{self.workdir}/logs/{name}.out",
            "-p", f"StandardError=append:{self.workdir}/logs/{name}.err",
            self.tools.sleep, arg,
        ]  # fmt: skip
        t0 = time.monotonic_ns()
        subprocess.run(argv, env=self.env, check=True, stdin=subprocess.DEVNULL)
        return arg, t0

    def status_command(self) -> list[str] | None:
        return ["systemctl", "--user", "list-units", "--all", "--no-pager", "--plain", "u*"]

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.runtime, ignore_errors=True)
