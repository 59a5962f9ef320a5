"""Workload 8: the cost of one decision, `plan()` over N specs with a handful of differences.

Usage: plan_cost.py N REPS   (prints JSON). Runs in its own interpreter with the
reconciler importable; building the inputs is not timed, only the plan() call.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.stats import summary  # noqa: E402
from reconciler.model import Desired, Handle, Spec, UnitRecord, UnitState  # noqa: E402
from reconciler.plan import plan  # noqa: E402

NOW = 2_000_000_000.0


def make_spec(i: int, arg: str = "1000001") -> Spec:
    name = f"u{i:06d}"
    return Spec(
        name=name, command=("sleep", arg), cwd="/srv", path=f"/srv/specs/{name}.toml", env={"PYTHONUNBUFFERED": "1"}
    )


def running(spec: Spec, pid: int) -> UnitRecord:
    handle = Handle("posix", spec.name, spec.process_hash, pid, NOW - 3600, {"boot_id": "b", "start_ticks": pid})
    return UnitRecord(
        name=spec.name, spec=spec, handle=handle, pid=pid, started_at=NOW - 3600, state=UnitState.RUNNING
    )


def inputs(n: int) -> tuple[Desired, dict[str, UnitRecord], int]:
    """n specs, all running as specified, except: 3 added, 2 removed, 2 changed, 1 exited (to restart)."""
    specs = {s.name: s for s in (make_spec(i) for i in range(n))}
    records = {name: running(spec, 1000 + i) for i, (name, spec) in enumerate(specs.items())}
    for i in range(n, n + 3):  # added: a spec, no record
        s = make_spec(i)
        specs[s.name] = s
    for i in range(n + 3, n + 5):  # removed: a record, no spec
        s = make_spec(i)
        records[s.name] = running(s, 1000 + i)
    for i in (n // 3, n // 2):  # changed command line: restart
        s = make_spec(i, arg="2000002")
        specs[s.name] = s
    victim = records[make_spec(n // 4).name]  # exited a minute ago: restart by policy
    records[victim.name] = UnitRecord(
        name=victim.name, spec=victim.spec, state=UnitState.EXITED, exit_code=None, exit_signal=9,
        exited_at=NOW - 60, started_at=NOW - 3600, failures=1,
    )  # fmt: skip
    return Desired(specs=specs), records, 3 + 2 + 2 + 1


def main() -> None:
    n, reps = int(sys.argv[1]), int(sys.argv[2])
    desired, records, differences = inputs(n)
    actions = len(plan(desired, records, NOW).actions)  # also warms up
    samples = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter_ns()
        plan(desired, records, NOW)
        samples.append(round((time.perf_counter_ns() - t0) / 1e6, 3))
    note = "" if actions == differences else f"plan() returned {actions} actions for {differences} differences!"
    print(json.dumps({
        "n": n, "differences": differences, "actions": actions, "samples_ms": samples, "summary": summary(samples),
        "note": note or "Inputs built outside the timing; the garbage collector ran before each call.",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
