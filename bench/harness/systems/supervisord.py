"""Peer: supervisord (the `supervisor` package from PyPI), tuned for its best legitimate speed."""

from __future__ import annotations

import os
import subprocess
import time
import xmlrpc.client

from .. import procfs
from .base import System, Tools

MAIN_CONF = """\
[unix_http_server]
file={work}/supervisor.sock

[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
childlogdir={work}/logs
loglevel=warn
minfds={minfds}
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{work}/supervisor.sock

[include]
files = {work}/conf.d/*.conf
"""

PROGRAM_CONF = """\
[program:{name}]
command={sleep} {arg}
startsecs=0
autorestart=true
stdout_logfile={work}/logs/{name}.out
stderr_logfile={work}/logs/{name}.err
"""


class Supervisord(System):
    name = "supervisord"
    how = (
        "one [program:x] file per unit in an [include] dir, `startsecs=0`, `autorestart=true`, "
        "`loglevel=warn`, output to a file per unit as the others; add one = file renamed into place, "
        "then XML-RPC `reloadConfig` + `addProcessGroup` over one kept unix-socket connection "
        "(what `supervisorctl update` does, without its start-up)"
    )

    @classmethod
    def unavailable(cls, tools: Tools) -> str | None:
        if tools.exe("supervisord") is None:
            return "`supervisor` is not installed (it is in the bench venv)"
        try:
            import supervisor.xmlrpc  # noqa: F401
        except ImportError:
            return "the `supervisor` package cannot be imported by the harness"
        return None

    @classmethod
    def version(cls, tools: Tools) -> str:
        out = subprocess.run([tools.exe("supervisord"), "--version"], capture_output=True, text=True)
        return "supervisord " + out.stdout.strip()

    def __init__(self, tools: Tools, workdir, prefix: str) -> None:
        super().__init__(tools, workdir, prefix)
        (workdir / "conf.d").mkdir()
        (workdir / "logs").mkdir()
        self.conf = workdir / "supervisord.conf"
        self._rpc = None

    def define(self, name: str, arg: str) -> None:
        text = PROGRAM_CONF.format(name=name, sleep=self.tools.sleep, arg=arg, work=self.workdir)
        (self.workdir / "conf.d" / f"{name}.conf").write_text(text)

    def start(self) -> int:
        # Three pipes per child, plus logs: leave room for the largest N.
        minfds = 8 * (len(self.units) + 200)
        self.conf.write_text(MAIN_CONF.format(work=self.workdir, minfds=max(minfds, 1024)))
        return self.spawn([self.tools.exe("supervisord"), "-c", str(self.conf)])

    def ready_for_changes(self, timeout: float) -> None:
        from supervisor.xmlrpc import SupervisorTransport

        sock = self.workdir / "supervisor.sock"
        procfs.wait_until(sock.exists, timeout, "supervisord's control socket")
        transport = SupervisorTransport(None, None, f"unix://{sock}")
        self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        procfs.wait_until(lambda: self._rpc.supervisor.getState()["statename"] == "RUNNING", timeout, "supervisord")

    def add(self) -> tuple[str, int]:
        name, arg = self.new_unit()
        final = self.workdir / "conf.d" / f"{name}.conf"
        staged = final.with_name(final.name + ".tmp")
        staged.write_text(PROGRAM_CONF.format(name=name, sleep=self.tools.sleep, arg=arg, work=self.workdir))
        t0 = time.monotonic_ns()
        os.rename(staged, final)
        added, _changed, _removed = self._rpc.supervisor.reloadConfig()[0]
        for group in added:
            self._rpc.supervisor.addProcessGroup(group)
        return arg, t0

    def status_command(self) -> list[str] | None:
        return [self.tools.exe("supervisorctl"), "-c", str(self.conf), "status"]
