#!/usr/bin/env python3
"""Benchmarks side by side: the reconciler, supervisord, a systemd user manager and a raw lower bound.

    python bench/run.py                   # everything, as `make bench` does (about 15 min on 2 cores)
    python bench/run.py --quick           # small N, few repetitions: a minute or two
    python bench/run.py --only add_one,crash_restart --systems raw,reconciler

On first use it builds its own virtualenv, bench/.venv, with the reconciler
(installed from this checkout as users install it: not editable, byte-compiled,
reinstalled whenever its sources change), supervisor, py-spy and pyinstrument,
and re-executes itself there;
when systemd is to be measured it re-executes once more inside a private mount
namespace (root only). See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
VENV_PACKAGES = ["supervisor>=4.2,<5", "py-spy", "pyinstrument"]

sys.path.insert(0, str(BENCH))

from harness import procfs, report  # noqa: E402
from harness.observer import Observer  # noqa: E402
from harness.systems import ALL, Tools  # noqa: E402
from harness.systems.systemd import NAMESPACE_MARK, Systemd, in_namespace, prepare_namespace, unshare_argv  # noqa: E402
from harness.workloads import PRESETS, WORKLOADS, Bench, run_workloads  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick", help="small N, few repetitions")
    size.add_argument("--smoke", dest="preset", action="store_const", const="smoke", help="tiny N (the test suite's)")
    p.set_defaults(preset="full")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated workloads: {', '.join(WORKLOADS)}")
    p.add_argument("--systems", default=",".join(ALL), help=f"comma-separated systems: {', '.join(ALL)}")
    p.add_argument("--out", type=Path, help="where results.json and RESULTS.md go "
                   "(default: bench/ for a full run of everything, else bench/.work/out)")  # fmt: skip
    p.add_argument("--no-venv", action="store_true", help="use this interpreter, do not build bench/.venv")
    p.add_argument("--poll-observer", action="store_true", help="scan /proc instead of the kernel's proc connector")
    args = p.parse_args(argv)
    args.only = [w for w in args.only.split(",") if w]
    args.systems = [s for s in args.systems.split(",") if s]
    for w in args.only:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    for s in args.systems:
        if s not in ALL:
            p.error(f"unknown system {s!r} (known: {', '.join(ALL)})")
    complete = args.preset == "full" and set(args.only) == set(WORKLOADS) and set(args.systems) == set(ALL)
    args.out = args.out or (BENCH if complete else BENCH / ".work" / "out")
    return args


# -- re-executing: the bench venv, then the mount namespace ---------------------------


# What the reconciler's wheel is built from: a change to any of these means a reinstall.
PROJECT_SOURCES = ("pyproject.toml", "setup.py", "README.md", "reconciler", "drivers")
NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")


def ensure_venv() -> None:
    """Build bench/.venv when missing or when the project's packaging changed; exec into it."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        refresh_install()
        return
    python = VENV / "bin" / "python"
    stamp = VENV / ".bench-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + repr(VENV_PACKAGES).encode()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == want):
        print(f"building {VENV.relative_to(ROOT)} (reconciler, {', '.join(VENV_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip_install(python, [str(project_copy()), *VENV_PACKAGES])
        (VENV / ".bench-source-stamp").write_text(source_digest())
        stamp.write_text(want)
    os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def refresh_install() -> None:
    """Reinstall the reconciler into bench/.venv if its sources changed since it was installed.

    It is installed, not editable, so that start-up is what users get (no editable
    finder on every start, modules byte-compiled by pip): the one-shot commands'
    wall times depend on it.
    """
    stamp = VENV / ".bench-source-stamp"
    digest = source_digest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print("reinstalling the reconciler into bench/.venv (its sources changed)", flush=True)
    pip_install(VENV / "bin" / "python", ["--no-deps", "--force-reinstall", str(project_copy())])
    stamp.write_text(digest)


def source_digest() -> str:
    digest = hashlib.sha256()
    for name in PROJECT_SOURCES:
        top = ROOT / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".so"):
                continue
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def project_copy() -> Path:
    """A fresh copy of the project's sources to build from: an in-tree build would leave
    setuptools' build/ directory, which keeps modules deleted since, in the checkout."""
    copy = BENCH / ".work" / "project"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in PROJECT_SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=NOT_SOURCES)
        else:
            shutil.copy2(source, copy / name)
    return copy


def pip_install(python: Path, args: list[str]) -> None:
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--compile"]
    done = subprocess.run([*pip, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pip could not install into {VENV}:\n{done.stdout}{done.stderr}")


def ensure_namespace(systems: list[str]) -> None:
    """Re-exec inside a private mount namespace when systemd is to be measured and can be."""
    if "systemd" not in systems or in_namespace() or Systemd.cannot_host() is not None:
        return
    os.environ[NAMESPACE_MARK] = "1"
    argv = unshare_argv([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]])
    os.execv(argv[0], argv)


# -- facts ----------------------------------------------------------------------------------


def machine_facts() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "proactive_reclaim": procfs.proactive_reclaim(),
    }


# A quick creation in the work directory takes 15-45 µs here; several hundred while ext4 skips recently
# deleted inodes (settle_file_creation).
QUICK_CREATE_US = 60.0
SETTLE_PROBE_EVERY = 10.0


def file_create_us(directory: Path, count: int = 200) -> float:
    """Median µs to create an empty file in a fresh directory below `directory` (the files are kept).

    Every supervisor but raw creates its units' log files while it converges, so the
    cost is reported beside the figures it is part of (why it varies: settle_file_creation).
    """
    probe = directory / f"create-probe-{time.monotonic_ns()}"
    probe.mkdir(parents=True)
    times = []
    for i in range(count):
        t0 = time.perf_counter_ns()
        os.close(os.open(probe / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        times.append(time.perf_counter_ns() - t0)
    return round(sorted(times)[count // 2] / 1000, 1)


def settle_file_creation(workroot: Path, longest: float) -> dict:
    """Wait, `longest` seconds at most, until creating a file in the work directory is quick again.

    On ext4 without a journal, the kernel avoids reusing an inode deleted in the
    last 60 s (300 s while its inode table block is unwritten), and each creation
    looks at every such inode on its way: after a mass deletion (the end of an
    earlier run, a test suite), creating a file costs up to a millisecond for a
    few minutes. That is the state of the disk, not of any system, and it weighs
    only on those that create files (every one but raw), so the run waits it out.
    """
    facts = {"file_create_us_start": file_create_us(workroot), "file_create_wait_s": 0.0}
    if facts["file_create_us_start"] <= QUICK_CREATE_US or longest <= 0:
        return facts
    print(f"creating a file takes {facts['file_create_us_start']} µs: waiting for the disk to settle", flush=True)
    os.sync()
    t0 = time.monotonic()
    while True:
        time.sleep(SETTLE_PROBE_EVERY)  # the kernel's window passing, not a synchronisation
        facts["file_create_us_settled"] = file_create_us(workroot)
        facts["file_create_wait_s"] = round(time.monotonic() - t0)
        if facts["file_create_us_settled"] <= QUICK_CREATE_US or time.monotonic() - t0 >= longest:
            return facts


def versions(tools: Tools, systems: dict) -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    out = {"project_commit": commit.stdout.strip() or "unknown"}
    sleep = subprocess.run([tools.sleep, "--version"], capture_output=True, text=True).stdout.splitlines()
    out["sleep"] = sleep[0] if sleep else tools.sleep
    for name, info in systems.items():
        if info.get("version"):
            out[name] = info["version"]
    return out


# -- the run ----------------------------------------------------------------------------------


def without_local_paths(text: str) -> str:
    """Results are committed: where this checkout lives on this machine is nobody's business."""
    return text.replace(str(ROOT), ".")


def raise_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.no_venv:
        ensure_venv()
    tools = Tools(bin_dir=Path(sys.executable).parent, python=sys.executable, sleep=shutil.which("sleep"))
    ensure_namespace(args.systems)
    if in_namespace():
        prepare_namespace()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_on_signal)

    systems_info: dict = {}
    selected = []
    for name in args.systems:
        cls = ALL[name]
        reason = cls.unavailable(tools)
        systems_info[name] = {"how": cls.how, "unavailable": reason, "version": None if reason else cls.version(tools)}
        if reason is None:
            selected.append(cls)
        else:
            print(f"skipping {name}: {reason}")
    if not selected:
        print("no system can run here", file=sys.stderr)
        return 1

    tag = f"9{random.randrange(10**4):04d}"
    workroot = BENCH / ".work" / f"run-{tag}"
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    facts = machine_facts()
    sizes = PRESETS[args.preset]
    facts.update(settle_file_creation(workroot, sizes.settle_s))
    observer = Observer(tag, force_poll=args.poll_observer)
    bench = Bench(tools=tools, observer=observer, workroot=workroot, tag=tag, systems=selected, sizes=sizes)
    print(f"run {tag}: {', '.join(c.name for c in selected)}; workloads {', '.join(args.only)}; "
          f"preset {args.preset}; observer {observer.mode}", flush=True)  # fmt: skip
    try:
        run_workloads(bench, args.only)
    finally:
        # The load the workloads left, not the teardown's (every system stopped at once, its files removed).
        facts["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        bench.teardown_all()
        facts["file_create_us_end"] = file_create_us(workroot)
        observer_facts = observer.describe()
        observer.close()
        leaked = procfs.pids_with_sleep_prefix(tag)
        procfs.kill_quietly(leaked)
        left_fences = procfs.sweep_fences(tag)
        shutil.rmtree(workroot, ignore_errors=True)
    if leaked or left_fences:
        error = f"{len(leaked)} children outlived their system; cgroups left behind: {left_fences}"
        bench.errors.append({"workload": "teardown", "system": "?", "error": error})

    results = {
        "schema": 1,
        "tag": tag,
        "preset": args.preset,
        "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.monotonic() - t_start, 1),
        "machine": facts,
        "versions": versions(tools, systems_info),
        "observer": observer_facts,
        "sizes": asdict(sizes),
        "systems": systems_info,
        "workloads": bench.results,
        "errors": bench.errors,
    }
    results["targets"] = report.targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(without_local_paths(json.dumps(results, indent=1) + "\n"))
    md = args.out / "RESULTS.md"
    md.write_text(without_local_paths(report.markdown(results, report.kept_notes(md))))
    print(f"wrote {args.out / 'results.json'} and {md}")
    for t in results["targets"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"  {t['target']}: {report._fmt(t['value'], 2)} {t['unit']} (limit {t['limit']:g}) {met}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
