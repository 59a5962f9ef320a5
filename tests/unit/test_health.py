"""Health rules (tables) and probes against real local servers and real commands."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import anyio
import pytest

from reconciler.health import ProbeResult, health_before_probe, next_health, next_probe_at, probe, probe_due
from reconciler.model import Health, HealthCheck, HealthType
from reconciler.reaper import Reaper

# --- the rules -------------------------------------------------------------------

CHECK = HealthCheck(type=HealthType.TCP, port=1, interval=5.0, retries=3, start_period=10.0)
H, U, UH, N = Health.HEALTHY, Health.UNKNOWN, Health.UNHEALTHY, Health.NONE


@pytest.mark.parametrize(
    ("health", "failures", "ok", "age", "expected"),
    [
        # first success -> healthy, failures reset
        (U, 0, True, 0.5, (H, 0)),
        (U, 2, True, 30.0, (H, 0)),
        (UH, 7, True, 30.0, (H, 0)),
        (N, 0, True, 0.5, (H, 0)),
        # failures within start_period of a never-healthy process do not count
        (U, 0, False, 0.5, (U, 0)),
        (U, 0, False, 9.99, (U, 0)),
        (N, 0, False, 0.5, (U, 0)),
        # ...but they count once start_period is over
        (U, 0, False, 10.0, (U, 1)),
        (U, 1, False, 11.0, (U, 2)),
        (U, 2, False, 12.0, (UH, 3)),
        (N, 2, False, 12.0, (UH, 3)),
        # ...and at once for a process that has been healthy
        (H, 0, False, 1.0, (H, 1)),
        (H, 1, False, 2.0, (H, 2)),
        (H, 2, False, 3.0, (UH, 3)),
        # unhealthy stays unhealthy, counting on
        (UH, 3, False, 40.0, (UH, 4)),
    ],
)
def test_next_health(health: Health, failures: int, ok: bool, age: float, expected: tuple[Health, int]) -> None:
    started_at = 1000.0
    assert next_health(health, failures, ok, CHECK, started_at, started_at + age) == expected


@pytest.mark.parametrize(("retries", "probes_to_unhealthy"), [(0, 1), (1, 1), (2, 2), (5, 5)])
def test_retries_consecutive_failures_make_unhealthy(retries: int, probes_to_unhealthy: int) -> None:
    check = HealthCheck(type=HealthType.TCP, port=1, retries=retries)
    health, failures = health_before_probe(check), 0
    seen = []
    for probe_number in range(1, 7):
        health, failures = next_health(health, failures, False, check, 0.0, float(probe_number))
        seen.append(health)
    assert seen.index(Health.UNHEALTHY) == probes_to_unhealthy - 1
    assert failures == 6


def test_health_before_probe() -> None:
    assert health_before_probe(None) is Health.NONE
    assert health_before_probe(CHECK) is Health.UNKNOWN


@pytest.mark.parametrize(
    ("last_checked_at", "now", "due", "next_at"),
    [
        (None, 1000.0, False, 1005.0),  # first probe: one interval after the start
        (None, 1004.99, False, 1005.0),
        (None, 1005.0, True, 1005.0),
        (995.0, 1003.0, False, 1005.0),  # a probe of the previous process does not count
        (1002.0, 1006.0, False, 1007.0),
        (1002.0, 1007.0, True, 1007.0),
        (1002.0, 1100.0, True, 1007.0),
    ],
)
def test_probe_schedule(last_checked_at: float | None, now: float, due: bool, next_at: float) -> None:
    started_at = 1000.0
    assert next_probe_at(CHECK, last_checked_at, started_at) == next_at
    assert probe_due(CHECK, last_checked_at, started_at, now) is due


# --- real probes ----------------------------------------------------------------

SERVER = r"""
import http.server, socket, ssl, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            threading.Event().wait()  # hangs until the server is killed
        status = {"/ok": 200, "/ok?q=1": 200, "/fail": 500, "/redirect": 302}.get(self.path, 404)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/fail")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    daemon_threads = True

server = Server((sys.argv[1], 0), Handler)
if len(sys.argv) > 2:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.contextmanager
def http_server(host: str, *tls_files: Path) -> Iterator[int]:
    """A real HTTP server child on a free port: /ok 200, /fail 500, /redirect 302, /slow hangs."""
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, host, *map(str, tls_files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child prints its port once listening, or exits
        assert line.strip().isdigit(), "server did not start"
        yield int(line)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    with http_server("127.0.0.1") as port:
        yield port


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port that is bound but not listening: connections are refused, and nobody else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def running_reaper() -> AsyncIterator[Reaper]:
    reaper = Reaper()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reaper.run)
        yield reaper
        tasks.cancel_scope.cancel()


async def run_probe(check: HealthCheck, cwd: str = "/", env: dict[str, str] | None = None) -> ProbeResult:
    async with running_reaper() as reaper:
        return await probe(check, reaper=reaper, cwd=cwd, env=env or {})


def http_check(url: str, timeout: float = 5.0) -> HealthCheck:
    return HealthCheck(type=HealthType.HTTP, url=url, timeout=timeout)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "ok", "detail"),
    [
        ("/ok", True, "HTTP 200"),
        ("/ok?q=1", True, "HTTP 200"),
        ("/redirect", True, "HTTP 302"),  # a 3xx is healthy, and not followed to the 500 behind it
        ("/fail", False, "HTTP 500"),
        ("/missing", False, "HTTP 404"),
    ],
)
async def test_http_status(server_port: int, path: str, ok: bool, detail: str) -> None:
    assert await run_probe(http_check(f"http://127.0.0.1:{server_port}{path}")) == ProbeResult(ok, detail)


@pytest.mark.anyio
async def test_http_times_out(server_port: int) -> None:
    result = await run_probe(http_check(f"http://127.0.0.1:{server_port}/slow", timeout=0.3))
    assert not result.ok
    assert "timed out after 0.3s" in result.detail


@pytest.mark.anyio
async def test_http_refused(refusing_port: int) -> None:
    result = await run_probe(http_check(f"http://127.0.0.1:{refusing_port}/"))
    assert not result.ok
    assert "Connection refused" in result.detail


@pytest.mark.anyio
async def test_http_not_http() -> None:
    """A port that speaks something else is unhealthy, not an error."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(anyio.to_thread.run_sync, answer_garbage)
            result = await run_probe(http_check(f"http://127.0.0.1:{port}/"))
    assert result == ProbeResult(False, "not an HTTP response")


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http:///nohost", "http://127.0.0.1:notaport/"])
async def test_http_bad_url(url: str) -> None:
    result = await run_probe(http_check(url))
    assert not result.ok
    assert result.detail.startswith("bad url")


@pytest.mark.anyio
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
async def test_https_with_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    with http_server("127.0.0.1", cert, key) as port:
        assert await run_probe(http_check(f"https://127.0.0.1:{port}/ok")) == ProbeResult(True, "HTTP 200")
        assert await run_probe(http_check(f"https://127.0.0.1:{port}/fail")) == ProbeResult(False, "HTTP 500")


@pytest.mark.anyio
async def test_tcp_open(server_port: int) -> None:
    result = await run_probe(HealthCheck(type=HealthType.TCP, port=server_port))
    assert result == ProbeResult(True, f"port {server_port} open on 127.0.0.1")


@pytest.mark.anyio
async def test_tcp_closed(refusing_port: int) -> None:
    result = await run_probe(HealthCheck(type=HealthType.TCP, port=refusing_port))
    assert not result.ok
    assert "127.0.0.1: Connection refused" in result.detail


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.anyio
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_tcp_falls_back_to_ipv6_loopback() -> None:
    with http_server("::1") as port:
        result = await run_probe(HealthCheck(type=HealthType.TCP, port=port))
    assert result == ProbeResult(True, f"port {port} open on ::1")


def exec_check(*argv: str, timeout: float = 5.0) -> HealthCheck:
    return HealthCheck(type=HealthType.EXEC, command=argv, timeout=timeout)


@pytest.mark.anyio
async def test_exec_exit_codes() -> None:
    assert await run_probe(exec_check("true")) == ProbeResult(True, "true: exit code 0")
    assert await run_probe(exec_check("false")) == ProbeResult(False, "false: exit code 1")


@pytest.mark.anyio
async def test_exec_times_out_and_kills() -> None:
    duration = f"60.{os.getpid()}"  # marks this very sleep in /proc
    result = await run_probe(exec_check("sleep", duration, timeout=0.3))
    assert result == ProbeResult(False, "sleep: timed out after 0.3s")
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _read(p) == f"sleep\0{duration}\0".encode()]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.anyio
async def test_exec_runs_in_cwd_with_env(tmp_path: Path) -> None:
    (tmp_path / "ready").touch()
    check = exec_check("/bin/sh", "-c", 'test -f ready && test "$PROBE_TOKEN" = yes && test -n "$PATH"')
    assert (await run_probe(check, cwd=str(tmp_path), env={"PROBE_TOKEN": "yes"})).ok
    assert not (await run_probe(check, cwd=str(tmp_path), env={"PROBE_TOKEN": "no"})).ok
    assert not (await run_probe(check, cwd="/", env={"PROBE_TOKEN": "yes"})).ok


@pytest.mark.anyio
async def test_exec_missing_command_is_unhealthy(tmp_path: Path) -> None:
    result = await run_probe(exec_check("no-such-command-for-reconciler"), cwd=str(tmp_path))
    assert result == ProbeResult(False, "no-such-command-for-reconciler: exit code 127")
    missing_dir = await run_probe(exec_check("true"), cwd=str(tmp_path / "missing"))
    assert not missing_dir.ok


@pytest.mark.anyio
async def test_exec_killed_by_signal() -> None:
    result = await run_probe(exec_check("/bin/sh", "-c", "kill -TERM $$"))
    assert result == ProbeResult(False, "/bin/sh: killed by SIGTERM")
