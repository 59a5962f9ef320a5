"""Health probes, and the rules that turn probe results into a unit's health.

Probing is I/O (async, bounded by the check's timeout); the rules (`next_health`,
`next_probe_at`, `probe_due`) are pure functions of values and `now`, so the
planner can apply them without touching the network and tests can table them.
"""

from __future__ import annotations

import os
import signal
from urllib.parse import quote, urlsplit

import anyio
import attrs

from .model import Health, HealthCheck, HealthType
from .reaper import Reaper

_STATUS_LINE_MAX = 8192
_STREAM_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
)


@attrs.frozen
class ProbeResult:
    """One probe's verdict; `detail` is one line for the unit's message ("HTTP 503")."""

    ok: bool
    detail: str


async def probe(check: HealthCheck, *, reaper: Reaper, cwd: str, env: dict[str, str]) -> ProbeResult:
    """Probe once. An unhealthy target is a result, never an exception.

    `env` is overlaid on the reconciler's environment, as for the unit itself;
    `cwd` is where an exec check runs (the unit's working directory).
    """
    if check.type is HealthType.HTTP:
        if check.url is None:
            raise ValueError("http health check without a url")
        return await _probe_http(check.url, check.timeout)
    if check.type is HealthType.TCP:
        if check.port is None:
            raise ValueError("tcp health check without a port")
        return await _probe_tcp(check.port, check.timeout)
    if check.type is HealthType.EXEC:
        if not check.command:
            raise ValueError("exec health check without a command")
        return await _probe_exec(list(check.command), check.timeout, reaper, cwd, {**os.environ, **env})
    raise ValueError(f"unknown health check type {check.type!r}")


async def _probe_http(url: str, timeout: float) -> ProbeResult:
    """GET `url`; healthy on 2xx/3xx. Redirects are not followed: a 3xx means the
    server answered. HTTPS certificates are not verified (like kubelet's httpGet):
    a probe asks "is it up", and local services often use self-signed certificates.
    Only the status line is read, so a large body costs nothing."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return ProbeResult(False, f"bad url {url!r}: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ProbeResult(False, f"bad url {url!r}: expected http://HOST[:PORT]/PATH")
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {parts.netloc.rpartition('@')[2]}\r\n"
        "User-Agent: reconciler-health\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii", "replace")
    from anyio.streams.buffered import BufferedByteReceiveStream  # ~10 ms: imported by the first HTTP check

    tls = {"tls": True, "ssl_context": _unverified_tls(), "tls_standard_compatible": False} if parts.scheme == "https" else {}
    with anyio.move_on_after(timeout):
        try:
            stream = await anyio.connect_tcp(parts.hostname, port, **tls)
            async with stream:
                await stream.send(request)
                status_line = await BufferedByteReceiveStream(stream).receive_until(b"\r\n", _STATUS_LINE_MAX)
        except _STREAM_ERRORS as exc:
            return ProbeResult(False, f"GET {url}: {_reason(exc)}")
        return _judge_status_line(status_line)
    return ProbeResult(False, f"GET {url}: timed out after {timeout:g}s")


def _judge_status_line(line: bytes) -> ProbeResult:
    fields = line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not (fields[1].isdigit() and len(fields[1]) == 3):
        return ProbeResult(False, "not an HTTP response")
    status = int(fields[1])
    return ProbeResult(200 <= status < 400, f"HTTP {status}")


def _unverified_tls():  # -> ssl.SSLContext
    import ssl  # only https checks need it

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _probe_tcp(port: int, timeout: float) -> ProbeResult:
    """Healthy when a connection to the port opens on IPv4 loopback, or else IPv6."""
    failures = []
    with anyio.move_on_after(timeout):
        for host in ("127.0.0.1", "::1"):
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError as exc:
                failures.append(f"{host}: {_reason(exc)}")
                continue
            await stream.aclose()
            return ProbeResult(True, f"port {port} open on {host}")
        return ProbeResult(False, f"port {port}: " + "; ".join(failures))
    return ProbeResult(False, f"port {port}: timed out after {timeout:g}s")


async def _probe_exec(argv: list[str], timeout: float, reaper: Reaper, cwd: str, env: dict[str, str]) -> ProbeResult:
    """Healthy on exit code 0. The reaper runs it, so no other waiter steals its status."""
    try:
        code = await reaper.run_command(argv, timeout=timeout, cwd=cwd, env=env)
    except OSError as exc:
        return ProbeResult(False, f"cannot run {argv[0]}: {_reason(exc)}")
    if code is None:
        return ProbeResult(False, f"{argv[0]}: timed out after {timeout:g}s")
    if code < 0:
        return ProbeResult(False, f"{argv[0]}: killed by {signal.Signals(-code).name}")
    return ProbeResult(code == 0, f"{argv[0]}: exit code {code}")


def _reason(exc: BaseException) -> str:
    """The OS's words for a failure ("Connection refused"), also when anyio wraps them."""
    for candidate in (exc.__cause__, exc):
        if isinstance(candidate, OSError) and candidate.errno:
            return os.strerror(candidate.errno)
    return str(exc) or type(exc).__name__


# --- the rules (pure) -----------------------------------------------------------


def health_before_probe(check: HealthCheck | None) -> Health:
    """A new process's health: `none` without a check, `unknown` until probed."""
    return Health.NONE if check is None else Health.UNKNOWN


def next_health(
    record_health: Health, failures: int, result_ok: bool, check: HealthCheck, started_at: float, now: float
) -> tuple[Health, int]:
    """The health and consecutive-failure count after one probe of the process started at `started_at`.

    A success makes it healthy and resets the count. A failure within `start_period`
    of the start does not count while the process has never been healthy (a slow
    starter is not punished; one that was up and fails is). `retries` consecutive
    counted failures make it unhealthy. The caller resets health to
    `health_before_probe(check)` and failures to 0 when a new process starts.
    """
    if result_ok:
        return Health.HEALTHY, 0
    current = Health.UNKNOWN if record_health is Health.NONE else record_health
    if current is Health.UNKNOWN and now - started_at < check.start_period:
        return current, failures
    failures += 1
    if failures >= max(check.retries, 1):
        return Health.UNHEALTHY, failures
    return current, failures


def next_probe_at(check: HealthCheck, last_checked_at: float | None, started_at: float) -> float:
    """When the next probe is due: one interval after the last probe of this process,
    or one interval after its start (a process just exec'd is rarely listening yet,
    and a probe that fails at once would count against it)."""
    if last_checked_at is None or last_checked_at < started_at:
        return started_at + check.interval
    return last_checked_at + check.interval


def probe_due(check: HealthCheck, last_checked_at: float | None, started_at: float, now: float) -> bool:
    return now >= next_probe_at(check, last_checked_at, started_at)
