#!/usr/bin/env python3
"""Where the reconciler spends its time in one benchmark scenario.

    bench/.venv/bin/python bench/profile.py converge --n 1000     # py-spy on `reconciler run`, from its start
    bench/.venv/bin/python bench/profile.py idle --n 1000         # py-spy attached for 60 s of nothing
    bench/.venv/bin/python bench/profile.py crash --n 100         # py-spy during 50 kills
    bench/.venv/bin/python bench/profile.py add --n 100           # py-spy during 50 additions
    bench/.venv/bin/python bench/profile.py shutdown --n 500      # py-spy from SIGTERM to exit
    bench/.venv/bin/python bench/profile.py once --n 1000         # pyinstrument on a no-op `--once`
    bench/.venv/bin/python bench/profile.py status --n 1000       # pyinstrument on `status --json`

Prints the functions with the most samples (inclusive, and where the time is
spent itself) and writes the raw profile (py-spy collapsed stacks, or
pyinstrument text) to bench/.work/profile/. Uses the same adapter, cgroup and
observer as run.py; run it in the bench venv (run.py builds it). Like run.py, it
first reinstalls the reconciler there if its sources changed, so the profile is
of this checkout, installed as users install it.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import procfs  # noqa: E402
from harness.observer import Observer  # noqa: E402
from harness.systems import Tools  # noqa: E402
from harness.systems.reconciler import Reconciler  # noqa: E402
from harness.workloads import kill_and_wait  # noqa: E402
from run import VENV, refresh_install  # noqa: E402

OUT = BENCH / ".work" / "profile"
DAEMON = ("converge", "idle", "crash", "add", "shutdown")
ONE_SHOT = ("once", "status")


class Context:
    """Just what kill_and_wait needs of a Bench."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer


def py_spy(tools: Tools, out: Path, target: list[str]) -> list[str]:
    exe = tools.exe("py-spy")
    if exe is None:
        sys.exit("py-spy is not installed: run `python bench/run.py --smoke` once to build bench/.venv")
    return [exe, "record", "--nonblocking", "--format", "raw", "--rate", "250", "-o", str(out), *target]


def summarise(raw: Path, top: int = 25) -> str:
    """Top functions by inclusive and by own samples, from py-spy's collapsed stacks."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit():
            continue  # py-spy writes a bare count for samples it could not unwind
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # drop line numbers
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    ours = [(f, n) for f, n in inclusive.most_common() if "(reconciler/" in f or "(drivers/" in f][:top]
    rows = [f"{total} samples"]
    rows += ["", "inclusive (the project's functions):"] + [f"  {100 * n / total:5.1f}%  {f}" for f, n in ours]
    rows += ["", "own:"] + [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(rows)


def profile_daemon(scenario: str, n: int, tools: Tools, observer: Observer, system: Reconciler) -> Path:
    out = OUT / f"{scenario}-{n}.txt"
    args = system.prepare(n)
    if scenario == "converge":
        system.spawn(py_spy(tools, out, ["--", *system.command("run", "--stop-on-exit")]))
        observer.wait_execs(args, 0, timeout=120)
        daemon = next(pid for pid in system.fence.pids() if procfs.parent_pid(pid) == system.process.pid)
        signal_and_wait(daemon, system)
        return out
    system.start()
    observer.wait_execs(args, 0, timeout=120)
    system.ready_for_changes(timeout=30)
    spy = subprocess.Popen(py_spy(tools, out, ["--pid", str(system.process.pid)]), stdout=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches asynchronously; a second is plenty, and this is no measurement
    if scenario == "idle":
        time.sleep(60)
    elif scenario == "crash":
        for victim in args[:50]:
            kill_and_wait(Context(observer), victim)
            time.sleep(0.05)
    elif scenario == "add":
        for _ in range(50):
            arg, t0 = system.add()
            observer.wait_execs([arg], t0, timeout=30)
            time.sleep(0.05)
    elif scenario == "shutdown":
        system.terminate()
        system.wait_exit(timeout=60)
    spy.send_signal(signal.SIGINT)
    spy.wait(30)
    return out


def signal_and_wait(pid: int, system: Reconciler) -> None:
    procfs.kill_quietly([pid], signal.SIGTERM)
    system.process.wait(60)


def profile_one_shot(scenario: str, n: int, tools: Tools, observer: Observer, system: Reconciler) -> Path:
    args = system.prepare(n)
    subprocess.run(system.command("--once"), env=system.env, capture_output=True, check=True)
    observer.wait_execs(args, 0, timeout=120)
    out = OUT / f"{scenario}-{n}.txt"
    command = ["--once"] if scenario == "once" else ["status", "--json"]
    # The console script, as the benchmark runs it (`-m` would import the checkout in the working
    # directory); the project is installed, so its frames are shown as pyinstrument's own code would be.
    shown = ["--show-regex", r".*/(reconciler|reconciler_drivers)/.*"]
    pyinstrument = [tools.exe("pyinstrument"), *shown, "-o", str(out), tools.exe("reconciler"), *command]
    system.fence.enter()
    try:
        subprocess.run(pyinstrument, env=system.env, stdout=subprocess.DEVNULL, check=True)
    finally:
        system.fence.leave()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=DAEMON + ONE_SHOT)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    if Path(sys.prefix).resolve() == VENV.resolve():
        refresh_install()
    tools = Tools(bin_dir=Path(sys.executable).parent, python=sys.executable, sleep="/usr/bin/sleep")
    OUT.mkdir(parents=True, exist_ok=True)
    tag = f"8{random.randrange(10**4):04d}"
    observer = Observer(tag)
    system = Reconciler(tools, OUT / f"work-{tag}", f"{tag}001")
    try:
        if args.scenario in DAEMON:
            out = profile_daemon(args.scenario, args.n, tools, observer, system)
            print(summarise(out))
        else:
            out = profile_one_shot(args.scenario, args.n, tools, observer, system)
            print(out.read_text())
        print(f"\nprofile: {out}")
    finally:
        system.teardown()
        observer.close()
        procfs.sweep_fences(tag)


if __name__ == "__main__":
    main()
