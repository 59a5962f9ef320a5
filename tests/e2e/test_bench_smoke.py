"""bench/run.py end to end with a tiny N: every workload runs, the report is written, nothing is left behind.

The figures themselves are not asserted: benchmarks print numbers, tests check that they can be produced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALL_WORKLOADS = {"converge", "add_one", "crash_restart", "idle", "shutdown", "cron", "status", "plan"}


def run_bench(out: Path, systems: str, only: str | None = None) -> dict:
    argv = [sys.executable, "bench/run.py", "--smoke", "--no-venv", "--systems", systems, "--out", str(out)]
    if only:
        argv += ["--only", only]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness tears every system down on SIGTERM
        output, _ = proc.communicate(timeout=30)
        pytest.fail("bench/run.py --smoke took over 60 s:\n" + output)
    assert proc.returncode == 0, output
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == []
    assert leftover_children(results["tag"]) == []
    return results


def leftover_children(tag: str) -> list[int]:
    """Pids still running a `sleep <tag…>` child of that run."""
    left = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if len(argv) == 3 and argv[0].endswith(b"sleep") and argv[1].startswith(tag.encode()):
                left.append(int(entry.name))
    return left


def test_every_workload_runs_on_the_reconciler_and_the_raw_lower_bound(tmp_path):
    results = run_bench(tmp_path, "raw,reconciler")
    w = results["workloads"]
    assert set(w) == ALL_WORKLOADS
    for system in ("raw", "reconciler"):
        assert w["converge"]["5"][system]["summary"]["n"] == 1
        assert len(w["converge"]["5"][system]["major_faults"]) == 1
        assert w["add_one"][system]["summary"]["n"] == 2
        assert w["crash_restart"][system]["summary"]["n"] == 2
        assert w["shutdown"][system]["summary"]["n"] == 1
        assert w["idle"][system]["children_running"] == 5
    assert w["status"]["reconciler"]["check"] == "exit 0, 5 units, 5 running"
    assert w["cron"]["noop"]["summary"]["n"] == 1
    assert w["plan"]["actions"] == w["plan"]["differences"]
    assert {t["met"] for t in results["targets"]} <= {True, False}
    assert "the posix driver's spawn" in results["systems"]["reconciler"]["version"]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets (issue 3)" in report and "| reconciler |" in report
    assert "Major page faults on the whole machine during each converge" in report


PEERS = {
    "supervisord": "supervisor",  # the module the harness drives it through
    "systemd": None,
}


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_a_peer_runs_the_latency_workloads_when_installed(tmp_path, peer):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from harness.systems import ALL, Tools
        from harness.systems.systemd import Systemd
    finally:
        sys.path.remove(str(ROOT / "bench"))
    tools = Tools(bin_dir=Path(sys.executable).parent, python=sys.executable, sleep="sleep")
    reason = Systemd.cannot_host() if peer == "systemd" else ALL[peer].unavailable(tools)
    if reason is not None:
        pytest.skip(f"{peer}: {reason}")
    results = run_bench(tmp_path, peer, only="converge,add_one,crash_restart,shutdown")
    w = results["workloads"]
    assert w["converge"]["5"][peer]["summary"]["n"] == 1
    assert w["add_one"][peer]["summary"]["n"] == 2
    assert w["crash_restart"][peer]["summary"]["n"] == 2
    assert w["shutdown"][peer]["summary"]["n"] == 1
