"""results.json -> the issue's targets and RESULTS.md, a table a person can read.

RESULTS.md is regenerated on every full run; everything below NOTES_MARK is kept,
so findings, profiles and before/after figures written by hand survive.
"""

from __future__ import annotations

from pathlib import Path

from .stats import percentile

NOTES_MARK = "<!-- Everything below this line is kept when the tables above are regenerated. -->"
ORDER = ("raw", "reconciler", "systemd", "supervisord")
PEERS = ("raw", "systemd", "supervisord")


def _get(d: dict | None, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _median(entry: dict | None) -> float | None:
    return _get(entry, "summary", "median")


def targets(res: dict) -> list[dict]:
    """Each target of the issue with the value measured in this run and whether it is met."""
    w = res.get("workloads", {})
    out: list[dict] = []

    def add(name: str, value: float | None, limit: float, unit: str, *, below: bool = True, note: str = "") -> None:
        met = None if value is None else (value <= limit if below else value >= limit)
        out.append({"target": name, "limit": limit, "value": value, "unit": unit, "met": met, "note": note})

    conv = w.get("converge", {})
    sizes = sorted(conv, key=int)
    for n in [n for n in ("500", "1000") if n in conv] or sizes[-1:]:
        rec, raw = _median(_get(conv, n, "reconciler")), _median(_get(conv, n, "raw"))
        ratio = None if rec is None or not raw else round(rec / raw, 2)
        add(f"cold converge N={n}: reconciler / raw", ratio, 2.5, "×")

    for key, label, p50, p99 in (("add_one", "add one", 10, 50), ("crash_restart", "crash → restart", 5, 20)):
        rec = _get(w, key, "reconciler", "summary")
        add(f"{label}: p50", None if rec is None else rec["median"], p50, "ms")
        add(f"{label}: p99", None if rec is None else rec["p99"], p99, "ms")
        sd = _get(w, key, "systemd", "summary")
        if rec is not None and sd is not None:
            add(f"{label}: p50 reconciler / systemd (faster = below 1)", round(rec["median"] / sd["median"], 3), 1.0, "×")

    idle = w.get("idle", {})
    rec = idle.get("reconciler")
    if rec is not None:
        n = rec["n"]
        add(f"idle N={n}: reconciler CPU", rec["cpu_ms_per_min"], 30, "ms/min")
        sup = idle.get("supervisord")
        if sup is not None and sup["cpu_ms_per_min"]:
            per_unit = (rec["cpu_ms_per_min"] / rec["n"]) / (sup["cpu_ms_per_min"] / sup["n"])
            add(f"idle N={n}: CPU per unit, reconciler / supervisord", round(per_unit, 3), 0.1, "×")
        add(f"idle N={n}: reconciler RSS", rec["rss_mib"], 60, "MiB")
        add(f"idle N={n}: memory added per unit (PSS)", rec["added_pss_kib_per_unit"], 300, "KiB")

    down = w.get("shutdown", {})
    rec, raw = _median(down.get("reconciler")), _median(down.get("raw"))
    if rec is not None or raw is not None:
        n = _get(down, "reconciler", "n") or _get(down, "raw", "n")
        add(f"shutdown N={n}: reconciler / raw", None if rec is None or not raw else round(rec / raw, 2), 2.0, "×")

    cron = w.get("cron")
    if cron is not None:
        add(f"--once no-op, {cron['n']} specs (wall)", _median(cron["noop"]), 500, "ms")
    status = _get(w, "status", "reconciler")
    if status is not None:
        add(f"status --json, {res['sizes']['idle_n']} units (wall)", _median(status), 300, "ms")
    plan = w.get("plan")
    if plan is not None:
        add(f"plan() over {plan['n']} specs", _median(plan), 50, "ms")
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def _cell(entry: dict | None, p: str = "p90") -> str:
    s = _get(entry, "summary")
    if not s or not s.get("n"):
        return "–"
    return f"**{_fmt(s['median'])}** ({_fmt(s[p])} / {_fmt(s['max'])})"


def _ratio(a: dict | None, b: dict | None) -> str:
    ma, mb = _median(a), _median(b)
    return "–" if ma is None or not mb else f"{ma / mb:.2f}×"


def _latency_table(per_system: dict, systems: list[str], p: str = "p90") -> list[str]:
    head = f"| | {' | '.join(systems)} | " + " | ".join(f"reconciler ÷ {x}" for x in PEERS if x in systems) + " |"
    lines = [head, "|" + "---|" * (1 + len(systems) + len([x for x in PEERS if x in systems]))]
    row = [_cell(per_system.get(s), p) for s in systems]
    ratios = [_ratio(per_system.get("reconciler"), per_system.get(x)) for x in PEERS if x in systems]
    lines.append("| ms | " + " | ".join(row + ratios) + " |")
    return lines


def markdown(res: dict, notes: str) -> str:
    w = res["workloads"]
    systems = [s for s in ORDER if res["systems"].get(s, {}).get("unavailable") is None and s in res["systems"]]
    m, v = res["machine"], res["versions"]
    obs = res["observer"]
    lines = [
        "# Benchmarks: reconciler vs supervisord, systemd and a raw lower bound",
        "",
        f"Generated by `make bench` (`bench/run.py`, preset `{res['preset']}`) on {res['started_at']}, "
        f"{res['duration_s']:.0f} s. Raw samples: `bench/results.json`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end', '–')}",
        f"- Creating a file in the work directory (every system's log files but raw's): median "
        f"{m.get('file_create_us_start', '–')} µs at the start"
        + (
            f", {m['file_create_us_settled']} µs after waiting {m['file_create_wait_s']:g} s for the disk to settle"
            if "file_create_us_settled" in m else ""
        )
        + f", {m.get('file_create_us_end', '–')} µs at the end. On ext4 without a journal, every creation looks "
        "past the inodes deleted in the last minutes, which makes it cost up to a millisecond after a mass "
        "deletion: a slow start is waited out, and files are removed only when the run ends",
        *(
            [f"- Proactive reclaim: {m['proactive_reclaim']}. A system's files left untouched that long are read "
             "back from disk at its next start (the major page faults below the converge table)"]
            if m.get("proactive_reclaim") else []
        ),  # fmt: skip
        f"- Project: `{v.get('project_commit', '?')}`; " + "; ".join(f"{k}: {val}" for k, val in v.items() if k != "project_commit"),
        f"- Observer: {obs['mode']}"
        + (
            " — exec/exit times are the kernel's own event timestamps (CLOCK_MONOTONIC, ns): the observer's lag is not in any figure"
            if obs["mode"] == "connector"
            else f" — /proc scanned in a loop; a time is when a scan saw it, late by up to {obs['resolution_ns'] / 1e6:.1f} ms"
        )
        + (f"; it LOST {obs['lost_event_batches']} event batches" if obs.get("lost_event_batches") else ""),
        "- Cells: **median** (p90 / max) over repetitions, in ms unless said; ratios compare medians "
        "(below 1 = the reconciler is faster). Percentiles are nearest-rank.",
        "",
        "## Targets (issue 3)",
        "",
        "| target | limit | measured | met |",
        "|---|---|---|---|",
    ]
    for t in res["targets"]:
        met = {True: "yes", False: "**NO**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | ≤ {t['limit']:g} {t['unit']} | {_fmt(t['value'], 2)} {t['unit']} | {met} |")

    conv = w.get("converge")
    if conv:
        lines += ["", "## 1. Cold converge: N specs present, supervisor started → all N children exec'd", ""]
        peers = [x for x in PEERS if x in systems]
        lines.append(f"| N | {' | '.join(systems)} | " + " | ".join(f"reconciler ÷ {x}" for x in peers) + " |")
        lines.append("|" + "---|" * (1 + len(systems) + len(peers)))
        for n in sorted(conv, key=int):
            per = conv[n]
            cells = [_cell(per.get(s)) for s in systems] + [_ratio(per.get("reconciler"), per.get(x)) for x in peers]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines += ["", "Major page faults on the whole machine during each converge, median (max): pages read back from disk."]
        for n in sorted(conv, key=int):
            counts = [(s, conv[n][s].get("major_faults")) for s in systems if s in conv[n]]
            lines.append(f"- N = {n}: " + ", ".join(f"{s} {percentile(c, 50):g} ({max(c)})" for s, c in counts if c))
    for key, title in (
        ("add_one", "2. Add one: a unit added with N = {n} running → its child exec'd (median (p99 / max))"),
        ("crash_restart", "3. Crash → restart: SIGKILL one child (N = {n}) → its replacement exec'd (median (p99 / max))"),
    ):
        if w.get(key):
            lines += ["", "## " + title.format(n=res["sizes"]["churn_n"]), ""]
            lines += _latency_table(w[key], systems, "p99")
            lines.append("")
            lines.append("Samples: " + ", ".join(f"{s} {w[key][s]['summary']['n']}" for s in systems if s in w[key]))
    idle = w.get("idle")
    if idle:
        lines += [
            "",
            f"## 4. Idle cost: N = {res['sizes']['idle_n']} running, {res['sizes']['idle_s']:g} s, nothing happening",
            "",
            "| system | CPU ms/min (supervisor) | CPU ms/min (all it runs) | RSS MiB | added processes | "
            "added PSS KiB total | added PSS KiB per unit | children running / exec'd in the window |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in systems:
            e = idle.get(s)
            if e:
                lines.append(
                    f"| {s} | {_fmt(e['cpu_ms_per_min'])} | {_fmt(e['all_added_cpu_ms_per_min'], 2)} | {_fmt(e['rss_mib'])} | "
                    f"{e['added_processes']} | {e['added_pss_kib_total']} | {_fmt(e['added_pss_kib_per_unit'])} | "
                    f"{e['children_running']} / {e['child_execs_during_window']} |"
                )
        lines += [
            "",
            "One system at a time. Supervisor CPU is utime+stime of its process (clock ticks: 10 ms "
            "resolution over the window); \"all it runs\" is the cgroup's `cpu.stat usage_usec` (µs) for the "
            "supervisor and everything it spawned, children included. Added PSS: every process in the "
            "system's cgroup except the `sleep` children (supervisor, shims), divided by N — it includes the "
            "supervisor's fixed cost. The raw lower bound runs inside the harness: its CPU is its restarter "
            "thread's, it adds no process.",
        ]
    down = w.get("shutdown")
    if down:
        n = next(iter(down.values()))["n"]
        lines += ["", f"## 5. Shutdown: SIGTERM to the supervisor with N = {n} → all children gone", ""]
        lines += _latency_table(down, systems)
        lines += ["", "Supervisor process itself gone (ms after the SIGTERM): " + ", ".join(
            f"{s} {_fmt(_get(down, s, 'supervisor_exited_ms', 'median'))}" for s in systems if s in down and s != "raw")]  # fmt: skip
    cron = w.get("cron")
    if cron:
        lines += [
            "",
            f"## 6. Cron pass: `reconciler --once` with {cron['n']} specs (whole process, wall)",
            "",
            "| case | ms |",
            "|---|---|",
            f"| first pass (starts all {cron['n']}) | {_fmt(cron['cold_ms'])} |",
            f"| no-op | {_cell(cron['noop'])} |",
            f"| {cron['changed']['changed_specs']} specs changed | {_cell(cron['changed'])} |",
            "",
            "No peer has a one-shot pass: supervisord and systemd run as daemons only.",
        ]
    status = w.get("status")
    if status:
        lines += [
            "",
            f"## 7. Status of {res['sizes']['idle_n']} units (whole process, wall)",
            "",
            "| system | command | ms | output check |",
            "|---|---|---|---|",
        ]
        for s in systems:
            if s in status:
                e = status[s]
                lines.append(f"| {s} | `{e['command']}` | {_cell(e)} | {e['check']} |")
    plan = w.get("plan")
    if plan:
        lines += [
            "",
            f"## 8. Decision cost: `plan()` over {plan['n']} specs, {plan['differences']} differences (in-process)",
            "",
            f"{_cell(plan)} ms over {plan['summary']['n']} calls. {plan.get('note', '')}",
        ]
    lines += ["", "## How each system was run", ""]
    for s in systems:
        lines.append(f"- **{s}** ({res['systems'][s]['version']}): {res['systems'][s]['how']}")
    for s, info in res["systems"].items():
        if info.get("unavailable"):
            lines.append(f"- {s}: not measured — {info['unavailable']}")
    if res.get("errors"):
        lines += ["", "## Errors during the run", ""]
        for e in res["errors"]:
            lines.append(f"- {e['workload']} / {e['system']}: {e['error']}")
    lines += ["", NOTES_MARK, notes.rstrip() if notes else ""]
    return "\n".join(lines).rstrip() + "\n"


def kept_notes(path: Path) -> str:
    if not path.exists():
        return ""
    text = path.read_text()
    return text.split(NOTES_MARK, 1)[1].lstrip("\n") if NOTES_MARK in text else ""
