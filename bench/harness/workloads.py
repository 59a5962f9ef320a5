"""The eight workloads of the benchmark, each run on every available system.

Systems alternate between repetitions (the order rotates each time), so a slow
minute on the shared machine does not land on one system only. Times are
measured from the action's t0 to the kernel's exec/exit timestamps (see
observer.py); whole-process commands (`--once`, `status`) are timed by wall
clock around the process, which is what a user or a cron job waits for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import procfs
from .observer import Observer, ObserverError
from .stats import summary
from .systems import System, Tools
from .systems.reconciler import Reconciler

#: What a system may fail with during a workload; it is recorded in the report, then the run goes on.
SYSTEM_FAILURES = (TimeoutError, subprocess.SubprocessError, OSError, xmlrpc.client.Error, ObserverError)

WORKLOADS = ("converge", "add_one", "crash_restart", "idle", "shutdown", "cron", "status", "plan")


@dataclass(frozen=True)
class Sizes:
    """Sizes and repetition counts: `full` is the issue's, the others only shrink them."""

    converge_n: tuple[int, ...] = (100, 500, 1000)
    converge_reps: int = 4
    churn_n: int = 100  # units running while one is added / killed
    churn_blocks: int = 5  # each block: a fresh instance per system, `churn_per_block` of each sample
    churn_per_block: int = 10
    quiet_s: float = 0.05  # before each sample: the system's cgroup used < 1 ms CPU for this long
    idle_n: int = 1000
    idle_s: float = 60.0
    shutdown_n: int = 500
    cron_n: int = 1000
    cron_reps: int = 10
    cron_changed: int = 10
    cron_changed_reps: int = 5
    status_reps: int = 10
    plan_n: int = 10_000
    plan_reps: int = 30
    settle_s: float = 330.0  # at most this long for file creation in the work directory to be quick (run.py)


PRESETS = {
    "full": Sizes(),
    "quick": Sizes(
        converge_n=(50, 200), converge_reps=2, churn_n=20, churn_blocks=2, churn_per_block=5, idle_n=200,
        idle_s=5.0, shutdown_n=200, cron_n=200, cron_reps=3, cron_changed_reps=2, status_reps=3, plan_n=2000,
        plan_reps=5, settle_s=60.0,
    ),
    "smoke": Sizes(
        converge_n=(5,), converge_reps=1, churn_n=5, churn_blocks=1, churn_per_block=2, quiet_s=0.02, idle_n=5,
        idle_s=0.5, shutdown_n=5, cron_n=5, cron_reps=1, cron_changed=2, cron_changed_reps=1, status_reps=1,
        plan_n=50, plan_reps=2, settle_s=0.0,
    ),
}


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def ms(t_ns: int) -> float:
    return round(t_ns / 1e6, 3)


@dataclass
class Bench:
    tools: Tools
    observer: Observer
    workroot: Path
    tag: str
    systems: list[type[System]]
    sizes: Sizes
    results: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    live: set = field(default_factory=set)
    _instances: int = 0
    log: Callable[[str], None] = print

    def new_system(self, cls: type[System]) -> System:
        self._instances += 1
        prefix = f"{self.tag}{self._instances:03d}"
        return cls(self.tools, self.workroot / f"{cls.name}-{self._instances:03d}", prefix)

    @contextlib.contextmanager
    def running(self, cls: type[System]) -> Iterator[System]:
        system = self.new_system(cls)
        self.live.add(system)
        try:
            yield system
        finally:
            self.live.discard(system)
            system.teardown()

    def failed(self, workload: str, system: System, exc: BaseException) -> None:
        entry = {"workload": workload, "system": system.name, "error": f"{type(exc).__name__}: {exc}"}
        if system.process is not None:
            entry["log_tail"] = system.tail_log()
        self.errors.append(entry)
        self.log(f"  !! {system.name}: {entry['error']}")

    def teardown_all(self) -> None:
        while self.live:
            self.live.pop().teardown()

    # -- shared steps -------------------------------------------------------------

    def converge(self, system: System, n: int) -> tuple[list[str], int]:
        """Prepare n units, start, wait for every child's exec; (args, t0 -> last exec in ns)."""
        args = system.prepare(n)
        t0 = system.start()
        execs = self.observer.wait_execs(args, t0, timeout=60 + n * 0.1)
        return args, max(t for _pid, t in execs.values()) - t0

    def quiet(self, system: System, window: float | None = None, timeout: float = 30.0) -> None:
        """Wait until the system's cgroup has used under 1 ms of CPU over `window` seconds."""
        window = self.sizes.quiet_s if window is None else window
        deadline = time.monotonic() + timeout
        last = system.fence.cpu_usec()
        while last is not None and time.monotonic() < deadline:
            time.sleep(window)  # the measuring window itself, not a synchronisation
            now = system.fence.cpu_usec()
            if now - last < 1000:
                return
            last = now
        if last is not None:
            self.log(f"  ({system.name} still busy after {timeout:g}s: measuring anyway)")

    def child_pids(self, system: System) -> dict[str, int]:
        self.observer.drain()
        pids = {}
        for arg in system.units.values():
            hit = self.observer.last_exec(arg)
            if hit is not None and hit[0] not in self.observer.exits:
                pids[arg] = hit[0]
        return pids

    def run_in_fence(self, system: System, argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
        """Run a short command whose descendants belong to the system; (wall seconds, result)."""
        pipe = subprocess.PIPE
        system.fence.enter()
        try:
            t0 = time.monotonic_ns()
            proc = subprocess.Popen(argv, env=system.env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
        finally:
            system.fence.leave()
        out, err = proc.communicate()
        wall = time.monotonic_ns() - t0
        return wall / 1e9, subprocess.CompletedProcess(argv, proc.returncode, out, err)


# -- 1 & 5: cold converge, shutdown -------------------------------------------


def cold_cycles(bench: Bench, with_converge: bool, with_shutdown: bool) -> None:
    s = bench.sizes
    sizes = list(s.converge_n) if with_converge else []
    if with_shutdown and s.shutdown_n not in sizes:
        sizes.append(s.shutdown_n)
    converge: dict = {str(n): {} for n in sizes if with_converge}
    faults: dict = {str(n): {} for n in sizes if with_converge}
    shutdown: dict = {}
    turn = 0
    for rep in range(s.converge_reps):
        for n in sizes:
            turn += 1
            for cls in rotated(bench.systems, turn):
                with bench.running(cls) as system:
                    try:
                        before = procfs.major_faults()
                        _args, took = bench.converge(system, n)
                        if with_converge and n in s.converge_n:
                            converge[str(n)].setdefault(cls.name, []).append(ms(took))
                            faults[str(n)].setdefault(cls.name, []).append(procfs.major_faults() - before)
                        if with_shutdown and n == s.shutdown_n:
                            down, exited = measure_shutdown(bench, system)
                            entry = shutdown.setdefault(cls.name, {"children_gone": [], "supervisor_exited": []})
                            entry["children_gone"].append(ms(down))
                            if exited is not None:
                                entry["supervisor_exited"].append(ms(exited))
                    except SYSTEM_FAILURES as exc:
                        bench.failed("converge" if with_converge else "shutdown", system, exc)
            bench.log(f"  rep {rep + 1}/{s.converge_reps} N={n}: " + ", ".join(
                f"{name}={v[-1]:.0f}ms" for name, v in converge.get(str(n), {}).items() if v))  # fmt: skip
    if with_converge:
        bench.results["converge"] = {
            n: {
                name: {"samples_ms": v, "summary": summary(v), "major_faults": faults[n][name]}
                for name, v in per.items()
            }
            for n, per in converge.items()
        }
    if with_shutdown:
        bench.results["shutdown"] = {
            name: {
                "n": s.shutdown_n,
                "samples_ms": v["children_gone"],
                "summary": summary(v["children_gone"]),
                "supervisor_exited_ms": summary(v["supervisor_exited"]),
            }
            for name, v in shutdown.items()
        }


def measure_shutdown(bench: Bench, system: System) -> tuple[int, int | None]:
    """SIGTERM the settled supervisor; (t0 -> last child exit, t0 -> supervisor seen gone) in ns."""
    bench.quiet(system, window=0.2)
    pids = bench.child_pids(system)
    t0 = system.terminate()
    exits = bench.observer.wait_exits(pids.values(), timeout=60)
    gone = system.wait_exit(timeout=60)
    return max(exits.values()) - t0, None if gone is None else gone - t0


# -- 2 & 3: add one, crash -> restart --------------------------------------------


def churn(bench: Bench, with_add: bool, with_crash: bool) -> None:
    s = bench.sizes
    adds: dict[str, list[float]] = {}
    crashes: dict[str, list[float]] = {}
    for block in range(s.churn_blocks):
        for cls in rotated(bench.systems, block):
            with bench.running(cls) as system:
                try:
                    args, _ = bench.converge(system, s.churn_n)
                    system.ready_for_changes(timeout=30)
                    for _ in range(s.churn_per_block if with_add else 0):
                        bench.quiet(system)
                        arg, t0 = system.add()
                        _pid, t = bench.observer.wait_execs([arg], t0, timeout=30)[arg]
                        adds.setdefault(cls.name, []).append(ms(t - t0))
                    for victim in args[: s.churn_per_block] if with_crash else []:
                        bench.quiet(system)
                        crashes.setdefault(cls.name, []).append(ms(kill_and_wait(bench, victim)))
                except SYSTEM_FAILURES as exc:
                    bench.failed("add_one/crash_restart", system, exc)
        medians = [f"{c.name}: add {_med(adds.get(c.name))} crash {_med(crashes.get(c.name))}" for c in bench.systems]
        bench.log(f"  block {block + 1}/{s.churn_blocks}: " + ", ".join(medians))
    if with_add:
        bench.results["add_one"] = {n: {"samples_ms": v, "summary": summary(v)} for n, v in adds.items()}
    if with_crash:
        bench.results["crash_restart"] = {n: {"samples_ms": v, "summary": summary(v)} for n, v in crashes.items()}


def _med(values: list[float] | None) -> str:
    return "-" if not values else f"{summary(values)['median']:.1f}ms"


def kill_and_wait(bench: Bench, arg: str) -> int:
    """SIGKILL the child running `sleep arg`; ns from the kill to its replacement's exec."""
    bench.observer.drain()
    pid, _ = bench.observer.last_exec(arg)
    pidfd = os.pidfd_open(pid)
    try:
        t0 = time.monotonic_ns()
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _new_pid, t = bench.observer.wait_execs([arg], t0, timeout=30)[arg]
    return t - t0


# -- 4 & 7: idle cost, status -------------------------------------------------------


def fleet(bench: Bench, with_idle: bool, with_status: bool) -> None:
    """One system at a time with idle_n units: its idle cost, then its status command.

    One at a time so that "nothing happening" holds for the whole machine, and so
    that the largest process count stays that of one system.
    """
    n = bench.sizes.idle_n
    idle: dict = {}
    status: dict = {}
    for cls in bench.systems:
        with bench.running(cls) as system:
            try:
                bench.converge(system, n)
                bench.quiet(system, window=0.5)
                if with_idle:
                    idle[cls.name] = measure_idle(bench, system, n)
                if with_status and system.status_command() is not None:
                    status[cls.name] = measure_status(bench, system, n)
            except SYSTEM_FAILURES as exc:
                bench.failed("idle/status", system, exc)
        bench.log(f"  {cls.name}: " + ", ".join(f"{k} {v}" for k, v in idle.get(cls.name, {}).items() if k != "n"))
    if with_idle:
        bench.results["idle"] = idle
    if with_status:
        bench.results["status"] = status


def measure_idle(bench: Bench, system: System, n: int) -> dict:
    bench.observer.drain()
    execs_before = sum(len(v) for v in bench.observer.execs.values())
    own0, fence0 = system.own_cpu_ticks(), system.fence.cpu_usec()
    t0 = time.monotonic()
    time.sleep(bench.sizes.idle_s)  # the idle window being measured
    own1, fence1 = system.own_cpu_ticks(), system.fence.cpu_usec()
    seconds = time.monotonic() - t0
    bench.observer.drain()
    per_minute = 60.0 / seconds
    added = system.added_pids()
    pss_total = sum(p for p in map(procfs.pss_kib, added) if p is not None)
    rss = system.rss_kib()
    return {
        "n": n,
        "seconds": round(seconds, 2),
        "cpu_ms_per_min": None if own0 is None else round((own1 - own0) * 1000 / procfs.CLOCK_TICKS * per_minute, 1),
        "all_added_cpu_ms_per_min": None if fence0 is None else round((fence1 - fence0) / 1000 * per_minute, 2),
        "rss_mib": None if rss is None else round(rss / 1024, 1),
        "added_processes": len(added),
        "added_pss_kib_total": pss_total,
        "added_pss_kib_per_unit": round(pss_total / n, 1),
        "children_running": len(bench.child_pids(system)),
        "child_execs_during_window": sum(len(v) for v in bench.observer.execs.values()) - execs_before,
    }


def measure_status(bench: Bench, system: System, n: int) -> dict:
    walls = []
    for _ in range(bench.sizes.status_reps):
        wall, proc = bench.run_in_fence(system, system.status_command())
        walls.append(round(wall * 1000, 2))
    command = [os.path.basename(a) if a.startswith("/") else a for a in system.status_command()]
    check = check_status_output(system, proc, n)
    return {"samples_ms": walls, "summary": summary(walls), "command": " ".join(command), "check": check}


def check_status_output(system: System, proc: subprocess.CompletedProcess, n: int) -> str:
    """A one-line sanity check that the command listed the n units (it is timed regardless)."""
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 and not out.strip():
        return f"exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-200:]}"
    if system.name == "reconciler":
        try:
            units = json.loads(out)["units"]
        except (ValueError, KeyError) as exc:
            return f"exit {proc.returncode}, not the contract's JSON: {exc}"
        running = sum(1 for u in units if u.get("state") == "running")
        return f"exit {proc.returncode}, {len(units)} units, {running} running"
    lines = [line for line in out.splitlines() if line.strip()]
    return f"exit {proc.returncode}, {len(lines)} lines"


# -- 6: cron pass ----------------------------------------------------------------------


def cron(bench: Bench) -> None:
    """`reconciler --once` over cron_n specs: cold, no-op, and with a few changed specs."""
    s = bench.sizes
    if Reconciler not in bench.systems:
        return
    with bench.running(Reconciler) as system:
        try:
            args = system.prepare(s.cron_n)
            cold, proc = bench.run_in_fence(system, system.command("--once"))
            require_exit(proc, "cold --once")
            bench.observer.wait_execs(args, 0, timeout=30)
            noop = []
            for _ in range(s.cron_reps):
                bench.quiet(system)  # the units just started settle first, as before every other sample
                wall, proc = bench.run_in_fence(system, system.command("--once"))
                require_exit(proc, "no-op --once")
                noop.append(round(wall * 1000, 1))
            changed = []
            names = list(system.units)
            for rep in range(s.cron_changed_reps):
                new_args = []
                for name in names[rep * s.cron_changed : (rep + 1) * s.cron_changed]:
                    arg = system.renew(name)
                    system.define(name, arg)  # a new command line: the unit must be restarted
                    new_args.append(arg)
                bench.quiet(system)
                t0 = time.monotonic_ns()
                wall, proc = bench.run_in_fence(system, system.command("--once"))
                require_exit(proc, "--once with changed specs")
                bench.observer.wait_execs(new_args, t0, timeout=30)
                changed.append(round(wall * 1000, 1))
            bench.results["cron"] = {
                "n": s.cron_n,
                "cold_ms": round(cold * 1000, 1),
                "noop": {"samples_ms": noop, "summary": summary(noop)},
                "changed": {"changed_specs": s.cron_changed, "samples_ms": changed, "summary": summary(changed)},
            }
        except SYSTEM_FAILURES as exc:
            bench.failed("cron", system, exc)


def require_exit(proc: subprocess.CompletedProcess, what: str, ok: tuple[int, ...] = (0,)) -> None:
    if proc.returncode not in ok:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise subprocess.CalledProcessError(proc.returncode, what, stderr="\n".join(tail))


# -- 8: decision cost ------------------------------------------------------------------


def plan_cost(bench: Bench) -> None:
    """plan() over plan_n specs, timed in a separate interpreter (the harness never imports the reconciler)."""
    s = bench.sizes
    if Reconciler not in bench.systems:
        return
    script = Path(__file__).with_name("plan_cost.py")
    proc = subprocess.run(
        [bench.tools.python, str(script), str(s.plan_n), str(s.plan_reps)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        bench.errors.append({"workload": "plan", "system": "reconciler", "error": proc.stderr.strip()[-2000:]})
        bench.log("  !! plan: " + proc.stderr.strip()[-500:])
        return
    bench.results["plan"] = json.loads(proc.stdout)


def run_workloads(bench: Bench, selected: list[str]) -> None:
    chosen = set(selected)
    steps = [
        ("converge/shutdown", lambda: cold_cycles(bench, "converge" in chosen, "shutdown" in chosen)),
        ("add_one/crash_restart", lambda: churn(bench, "add_one" in chosen, "crash_restart" in chosen)),
        ("idle/status", lambda: fleet(bench, "idle" in chosen, "status" in chosen)),
        ("cron", lambda: cron(bench)),
        ("plan", lambda: plan_cost(bench)),
    ]
    for title, step in steps:
        if set(title.split("/")) & chosen:
            bench.log(f"== {title}")
            started = time.monotonic()
            step()
            bench.log(f"   ({time.monotonic() - started:.0f}s)")
