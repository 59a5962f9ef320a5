"""The reconciliation loop: every wake-up runs one whole pass.

A pass reads the whole desired state, observes the whole actual state, asks
the pure planner what to do, and launches the actions. Wake-ups (spec file
events, process exits, finished actions, backoff deadlines, SIGHUP, the
periodic resync) poke the loop, and pokes that arrive during a pass collapse
into one follow-up pass; what an exit or a spec event names serves only the
key-only passes below.

Two shortcuts keep reactions fast (key-only passes, as controller-runtime's
per-object requests): when a unit's process exits, that one unit is observed
and planned at once from the desired state of the last pass, and restarted if
the planner says so; when spec files change, the units they hold are read and
planned alone. The whole pass follows as for any other wake-up.

Actions run as tasks beside the loop, bounded by a limiter, so one slow stop
never holds up the other units; a unit with an action in flight is "busy" and
the planner leaves it alone until the outcome is folded in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any, Callable

import anyio
import attrs

from . import __version__
from .apply import carry_out
from .driver import DriverSet
from .errors import DriverError, DriverUnavailable
from .eventlog import EventLog
from .health import next_health, next_probe_at, probe, probe_due
from .ledger import Ledger
from .logs import LOGS_DIR, oversized, rotate_if_needed
from .memory import (
    Event,
    Outcome,
    absorb_observations,
    absorb_outcome,
    index_of_records,
    spec_events,
    spec_index,
    transition_events,
)
from .model import Desired, ProcessState, Spec, SpecProblem, StopSettings, UnitRecord, UnitState
from .plan import IN_PLACE, STOP, Action, Plan, effective_desired, plan
from .reaper import Reaper, signal_receiver
from .settings import Settings
from .specs import SpecReader, is_spec_name
from .statedir import make_dir
from .written import WrittenFiles

log = logging.getLogger(__name__)

# --once keeps passing while passes still act (dependency chains start level by level).
ONCE_MAX_PASSES = 20
# While actions are in flight, passes are spaced so they take at most a tenth of the
# time: a thousand starts finishing one by one must not cost a thousand full passes,
# and a pass in a burst only folds outcomes in while the starts wait for the GIL.
BURST_PACING = 10.0
# Pacing never delays a pass by more than this (exits have key-only passes): longer than the
# burst of a cold start of 1000 units, which a pass in its middle slowed by a tenth.
MAX_PACING = 3.0
# How long a change to files that are never specs waits for its pass (see _specs_changed).
LATE_POKE = 0.05
# A daemon checks unit log files for rotation this often (those written since the last check).
LOG_CHECK_INTERVAL = 30.0


@attrs.frozen
class PassResult:
    # Not in the repr: asyncio formats the main task's result on exit, and a plan of 1000 records
    # takes ~30 ms to format.
    plan: Plan = attrs.field(repr=False)
    started_at: float
    finished_at: float
    problems: tuple[SpecProblem, ...]


class Reconciler:
    """Owns the memory (records), the in-flight actions and the wake-ups of one state directory."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.reader = SpecReader(
            settings.specs_dir, allow_insecure=settings.allow_insecure_specs, trusted_uids=settings.trusted_uids()
        )
        # Made at once: watched from the first log check, before any unit writes.
        make_dir(settings.state_dir / LOGS_DIR, "the units' log directory")
        self.ledger = Ledger(settings.ledger_path)
        self.events = EventLog(settings.events_path, max_bytes=settings.events_max_bytes, keep=settings.events_keep)
        self.drivers = DriverSet(settings.state_dir, settings.driver)
        self.drivers.get(settings.driver)  # an unusable default driver is a fatal error, said at once
        self.reaper = Reaper()
        self.records: dict[str, UnitRecord] = self.ledger.units()
        self._saved: dict[str, UnitRecord] = dict(self.records)
        self._known_specs = index_of_records(self.records)
        self._known_problems = {p.path: p.error for p in self.ledger.problems()}
        self._adopting = {name for name, rec in self.records.items() if rec.handle is not None}
        self._spec_files = self.ledger.spec_files()
        self._seed_reader()
        self._busy: dict[str, Action] = {}
        self._actions_done = anyio.Event()  # set once no action is in flight: the first pass's are awaited (_after_first_starts)
        self._outcomes: list[Outcome] = []
        self._unwritten: list[Event] = []  # events not yet written (key-only passes, a burst's pass)
        self._unwritten_pass: PassResult | None = None  # a pass whose write waits for the next
        self._probes: dict[str, tuple[bool, float, int | None]] = {}  # name -> (ok, at, pid)
        self._probing: set[str] = set()
        self._watched: dict[str, tuple[int | None, anyio.CancelScope]] = {}
        self._wakeup = anyio.Event()
        self._pass_lock = anyio.Lock()  # a pass and a key-only pass never interleave
        self._desired: Desired | None = None  # what the last pass read, for key-only passes
        self._late_poke = False
        self._limiter = anyio.CapacityLimiter(settings.concurrency)
        self._task_group: Any = None
        self._settled: Callable[[], None] | None = None
        self.stopping = False
        self.once = False
        self.last_pass: PassResult | None = None

    # --- wake-ups -------------------------------------------------------------------------

    def poke(self) -> None:
        self._wakeup.set()

    async def _sleep(self, until: float | None) -> None:
        timeout = self.settings.resync_interval
        if until is not None:
            timeout = min(timeout, max(0.0, until - self.clock()))
        with anyio.move_on_after(timeout):
            await self._wakeup.wait()
        self._wakeup = anyio.Event()

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, once: bool = False, settled: Callable[[], None] | None = None) -> PassResult:
        """Reconcile until stopped (or, with `once`, until a pass has nothing left to do).

        `settled` (a daemon's) is called once the first pass's actions are done, or MAX_PACING after it.
        """
        self.once = once
        self._settled = settled
        if once:
            self._adopting = set()  # cron's --once continues the last pass's work; nothing is taken over
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self.reaper.run)
            self._announce_start(once)
            try:
                if once:
                    result = await self._converge_once()
                else:
                    tg.start_soon(self._handle_signals)
                    result = await self._serve()
                    if self.settings.stop_on_exit:
                        await self._stop_everything()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._drain()
                    await self._announce_stop(once)
            tg.cancel_scope.cancel()
        await self.drivers.aclose()
        self.ledger.close()
        return result

    async def _serve(self) -> PassResult:
        self.drivers.get(self.settings.driver).prepare_resident()
        result = await self.run_pass()
        self._task_group.start_soon(self._after_first_starts)
        while not self.stopping:
            wakes = [t for t in (result.plan.wake_at, self.health_wake(), self._write_due()) if t is not None]
            await self._sleep(min(wakes, default=None))
            await self._pace(result)
            if not self.stopping:
                result = await self.run_pass()
        return result

    async def _after_first_starts(self) -> None:
        """Once the first pass's actions are done (MAX_PACING at most): watch the specs and the logs,
        and call `settled`.

        Importing watchdog and setting its watches takes 10-20 ms: before a
        container's or a boot's first start it held that start up, and amid the
        burst of starts it took the GIL they need.
        """
        if self._busy:
            with anyio.move_on_after(MAX_PACING):
                await self._actions_done.wait()
        self._start_watching()
        if self._settled is not None:
            self._settled()

    def _start_watching(self) -> None:
        """A spec changed before the watch was set is read by the pass this poke brings."""
        from .watch import SpecWatcher

        self._task_group.start_soon(SpecWatcher(self.settings.specs_dir, self._specs_changed).run)
        self._task_group.start_soon(self._check_logs_periodically)
        self.poke()

    async def _pace(self, last: PassResult) -> None:
        """While actions are in flight, hold the next pass back (BURST_PACING).

        Pokes keep coming (each finished action), but only the last action's end,
        a stop or a write falling due ends the wait early: records then show the
        burst's outcome at once, and SIGTERM is never held up.
        """
        until = self.clock() + min(BURST_PACING * (last.finished_at - last.started_at), MAX_PACING)
        until = min(until, self._write_due() or until)
        while self._busy and not self.stopping and self.clock() < until:
            await self._sleep(until)

    async def _converge_once(self) -> PassResult:
        result = await self.run_pass()
        await self._rotate_logs()  # once per cron pass
        for _ in range(ONCE_MAX_PASSES):
            if not result.plan.actions and not self._busy:
                break
            await self._drain()
            result = await self.run_pass()
        return result

    async def _drain(self) -> None:
        """Wait for every in-flight action and fold its outcome in (SIGTERM finishes actions)."""
        while self._busy:
            await self._sleep(None)
        async with self._pass_lock:
            if self._outcomes or self._unwritten:
                records, events = self._fold_outcomes(self.records)
                await self._persist(records, events)

    async def _handle_signals(self) -> None:
        with signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.poke()
                else:
                    self.stopping = True
                    self.poke()

    # --- one pass -------------------------------------------------------------------------

    async def run_pass(self) -> PassResult:
        async with self._pass_lock:
            return await self._run_pass()

    async def _run_pass(self) -> PassResult:
        started = self.clock()
        desired = await anyio.to_thread.run_sync(self._read_desired)
        desired = self._desired = effective_desired(desired, self.records)
        events: list[Event] = spec_events(self._known_specs, self._known_problems, desired, started)
        self._known_specs = spec_index(desired) if desired.complete else {**self._known_specs, **spec_index(desired)}
        self._known_problems = {p.path: p.error for p in desired.problems}

        records, more = self._fold_outcomes(self.records)
        events += more
        handles = [r.handle for n, r in records.items() if r.handle is not None and n not in self._busy]
        observed = await self.drivers.observe(handles)
        now = self.clock()
        events += self._adoptions(observed, now)
        records, more = absorb_observations(records, observed, now)
        events += more
        records = self._fold_probes(records, now)

        # An action that finished while the drivers observed is folded in by the next pass.
        decided = plan(desired, records, now, busy=self._in_flight())
        events += transition_events(self.records, decided.records, now)
        launched = [action for action in decided.actions if action.kind != IN_PLACE]
        for action in launched:
            self._launch(action, records[action.unit] if action.unit in records else None)
        finished = self.clock()
        result = PassResult(decided, started, finished, desired.problems)
        duration_ms = round((finished - started) * 1000, 3)
        events.append({"ts": finished, "event": "pass.completed", "actions": len(decided.actions), "duration_ms": duration_ms})
        if launched and not self.once:
            self._write_with_next_pass(dict(decided.records), events, result)
        else:
            await self._persist(dict(decided.records), events, last_pass=result)
        if not self.once:
            self._watch_exits()
            self._schedule_probes(now)
        self.last_pass = result
        return result

    def _adoptions(self, observed: dict[str, Any], now: float) -> list[Event]:
        """`unit.adopted` for every process the ledger knew at start-up that still runs."""
        if not self._adopting:
            return []
        adopted = [
            {"ts": now, "event": "unit.adopted", "unit": name, "pid": observed[name].pid}
            for name in sorted(self._adopting)
            if name in observed and observed[name].state is ProcessState.RUNNING
        ]
        self._adopting = set()
        return adopted

    def _read_desired(self) -> Desired:
        desired = self.reader.read()
        return attrs.evolve(desired, restart_requests=self.ledger.restart_requests())

    def _seed_reader(self) -> None:
        """Start from the specs an earlier process parsed, where the files have not changed."""
        for rec in self.records.values():
            spec = rec.spec
            known = self._spec_files.get(spec.path) if spec is not None else None
            if spec is not None and known is not None and known[1] == spec.content_hash:
                self.reader.seed(spec.path, known[0], spec)

    def _spec_file_changes(self) -> tuple[dict[str, tuple[tuple[int, ...], str]], list[str]]:
        current = {path: (key, spec.content_hash) for path, (key, spec) in self.reader.fingerprints().items()}
        changed = {path: value for path, value in current.items() if self._spec_files.get(path) != value}
        removed = [path for path in self._spec_files if path not in current]
        self._spec_files = current
        return changed, removed

    def _fold_outcomes(self, records: dict[str, UnitRecord]) -> tuple[dict[str, UnitRecord], list[Event]]:
        events: list[Event] = []
        outcomes, self._outcomes = self._outcomes, []
        for outcome in outcomes:
            records, more = absorb_outcome(records, outcome)
            events += more
        return records, events

    def _write_with_next_pass(self, records: dict[str, UnitRecord], events: list[Event], result: PassResult) -> None:
        """Leave a pass's write to the next one, which comes once the actions it launched are done.

        Written now, it would take the GIL from the starts just launched (row building
        and JSON are Python), and what it writes, "starting" records without processes,
        the next pass overwrites anyway. The next pass comes at the latest MAX_PACING
        after this one (`_write_due`), and a stop writes everything (`_drain`).
        Key-only passes leave their writes the same way.
        """
        self.records = records
        self._unwritten += events
        self._unwritten_pass = result

    def _write_due(self) -> float | None:
        """When the next pass must come at the latest, to write a pass left unwritten (pacing's bound)."""
        pending = self._unwritten_pass
        return None if pending is None else pending.finished_at + MAX_PACING

    async def _persist(
        self, records: dict[str, UnitRecord], events: list[Event], last_pass: PassResult | None = None
    ) -> None:
        """Write what changed (key-only passes included): only the ledger and the event log hold state."""
        events, self._unwritten = self._unwritten + events, []
        last_pass, self._unwritten_pass = last_pass or self._unwritten_pass, None
        saved = self._saved
        changed = [r for n, r in records.items() if saved.get(n) is not r and saved.get(n) != r]
        gone = [n for n in self._saved if n not in records]
        self.records = records
        spec_files, spec_files_gone = self._spec_file_changes() if last_pass is not None else ({}, [])

        def write() -> None:
            if changed:
                self.ledger.save(changed)
            if gone:
                self.ledger.forget(gone)
            self.ledger.save_spec_files(spec_files, spec_files_gone)
            if events:
                self.events.append_many(events)
            if last_pass is not None:
                p = last_pass
                self.ledger.record_pass(
                    p.started_at, p.finished_at, len(p.plan.actions), len(p.problems), problems=list(p.problems)
                )

        await anyio.to_thread.run_sync(write)
        self._saved = dict(records)

    # --- actions ----------------------------------------------------------------------------

    def _launch(self, action: Action, before: UnitRecord | None, *, signalled: bool = False) -> None:
        handle = before.handle if before is not None else None
        self._busy[action.unit] = action
        self._task_group.start_soon(self._carry_out, action, handle, _stop_settings(action, before), signalled)

    async def _carry_out(self, action: Action, handle: Any, stop: StopSettings, signalled: bool) -> None:
        # Starts are bounded (each forks); stops are signals and waits, and all run at once.
        limiter = self._limiter if action.kind != STOP else contextlib.nullcontext()
        try:
            async with limiter:
                outcome = await carry_out(
                    action,
                    handle,
                    stop,
                    self.drivers,
                    self.settings.state_dir,
                    self.clock,
                    resident=not self.once,
                    signalled=signalled,
                )
        finally:
            self._busy.pop(action.unit, None)
            if not self._busy:
                self._actions_done.set()
        self._outcomes.append(outcome)
        self.poke()

    async def _stop_everything(self) -> None:
        """--stop-on-exit: stop every unit gracefully, each by its own stop settings.

        Every unit gets its stop signal in one sweep before any stop is awaited,
        as init systems do at shutdown: the last unit is not kept waiting while
        the bookkeeping of the others runs.
        """
        await self._drain()
        stops = [
            (Action(STOP, name, "reconciler exiting", spec=rec.spec), rec)
            for name, rec in self.records.items()
            if rec.handle is not None
        ]
        sent = [self._begin_stop(action, rec) for action, rec in stops]
        for (action, rec), signalled in zip(stops, sent):
            self._launch(action, rec, signalled=signalled)
        await self._drain()

    def _begin_stop(self, action: Action, rec: UnitRecord) -> bool:
        assert rec.handle is not None
        try:
            return self.drivers.get(rec.handle.driver).begin_stop(rec.handle, _stop_settings(action, rec).signal)
        except (DriverError, DriverUnavailable):
            return False  # the stop action tries again, and reports

    # --- exit detection -------------------------------------------------------------------

    def _watch_exits(self) -> None:
        """One waiter per live process; an exit pokes the loop (no polling)."""
        for name, rec in self.records.items():
            pid = rec.handle.pid if rec.handle is not None else None
            current = self._watched.get(name)
            if current is not None and current[0] == pid:
                continue
            if current is not None:
                current[1].cancel()
                del self._watched[name]
            if rec.handle is not None and rec.state is not UnitState.UNKNOWN:
                scope = anyio.CancelScope()
                self._watched[name] = (pid, scope)
                self._task_group.start_soon(self._wait_exit, rec.handle, scope)
        for name in [n for n in self._watched if n not in self.records]:
            self._watched.pop(name)[1].cancel()

    async def _wait_exit(self, handle: Any, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await self.drivers.get(handle.driver).wait(handle)
            except Exception:  # noqa: BLE001 - the next pass observes and reports the truth
                log.debug("waiting on %s failed", handle.unit, exc_info=True)
        if not scope.cancel_called:
            await self._pass_one(handle)
        self.poke()

    async def _pass_one(self, handle: Any) -> None:
        """The key-only pass after `handle`'s process exited: observe, plan and act on that unit alone."""
        async with self._pass_lock:
            name = handle.unit
            rec = self.records.get(name)
            desired = self._desired
            if self.stopping or desired is None or rec is None or rec.handle is not handle or name in self._in_flight():
                return  # a pass got there first, or there is nothing to go on
            spec = desired.specs.get(name)
            if spec is None:
                return
            observed = await self.drivers.observe([handle])
            now = self.clock()
            records, events = absorb_observations({name: rec}, observed, now)
            self._act_alone(attrs.evolve(desired, specs={name: spec}), {name: rec}, records, now, events)

    async def _specs_changed(self, paths: set[str]) -> None:
        if paths and not any(is_spec_name(os.path.basename(p)) for p in paths):
            # Only names that are never specs (a file being staged, an editor's swap file). A spec
            # may still point at one, so a pass follows, a moment later: the rename that usually
            # comes next is then taken alone, at once, rather than by a pass already reading.
            if not self._late_poke:
                self._late_poke = True
                self._task_group.start_soon(self._poke_later)
            return
        await self._pass_files(paths)
        self.poke()

    async def _poke_later(self) -> None:
        await anyio.sleep(LATE_POKE)
        self._late_poke = False
        self.poke()

    async def _pass_files(self, paths: set[str]) -> None:
        """The key-only pass after spec files changed: plan and act on the units they now hold, alone.

        A file is taken only if it holds a valid spec whose name no other file
        claims and that closes no dependency cycle; removals, problems and renamed
        units wait for the whole pass.
        """
        async with self._pass_lock:
            desired = self._desired
            if self.stopping or desired is None:
                return
            in_flight = self._in_flight()
            candidates = [
                spec
                for spec in self._read_changed(paths)
                if spec.name not in in_flight and not self.reader.claimed_elsewhere(spec)
            ]
            on_cycles = self.reader.on_dependency_cycles(candidates)
            taken = {spec.name: spec for spec in candidates if spec.name not in on_cycles}
            if not taken:
                return
            now = self.clock()
            one = attrs.evolve(desired, specs=taken, problems=(), complete=False)
            events = spec_events({n: self._known_specs[n] for n in taken if n in self._known_specs}, {}, one, now)
            self._known_specs.update(spec_index(one))
            self._desired = attrs.evolve(desired, specs={**desired.specs, **taken})
            records = {name: self.records[name] for name in taken if name in self.records}
            self._act_alone(one, records, records, now, events)

    def _in_flight(self) -> set[str]:
        """Units with an action under way, or done but not yet folded into their records.

        Every pass leaves them alone: a record may not show yet the process its
        unit's action started, and acting on it could start a twin.
        """
        return {*self._busy, *(outcome.action.unit for outcome in self._outcomes)}

    def _read_changed(self, paths: set[str]) -> list[Spec]:
        prefix = self.reader.specs_dir + os.sep
        wanted = sorted(
            p for p in map(os.path.abspath, paths) if p.startswith(prefix) and is_spec_name(os.path.basename(p))
        )
        return [outcome for outcome in map(self.reader.read_file, wanted) if isinstance(outcome, Spec)]

    def _act_alone(
        self,
        one: Desired,
        before: dict[str, UnitRecord],
        records: dict[str, UnitRecord],
        now: float,
        events: list[Event],
    ) -> None:
        """Plan and act on the units of `one` alone, from the last pass's memory of everything else.

        Their dependencies are read, never acted on; the whole pass that follows does the rest,
        writing included: a write here would hold up the start just launched (the writing
        thread holds the GIL), and it could not record the new process anyway, which is known
        only once the start's outcome is folded in.
        """
        dependencies = {
            dep: self.records[dep]
            for spec in one.specs.values()
            for dep in spec.depends_on
            if dep in self.records and dep not in one.specs
        }
        decided = plan(one, {**dependencies, **records}, now, busy=dependencies)
        mine = {name: decided.records[name] for name in one.specs if name in decided.records}
        events += transition_events(before, mine, now)
        for action in decided.actions:
            if action.kind != IN_PLACE:
                self._launch(action, records.get(action.unit))
        self.records = {**self.records, **mine}
        self._unwritten += events

    # --- health -------------------------------------------------------------------------------

    def _schedule_probes(self, now: float) -> None:
        for name, rec in self.records.items():
            spec = rec.spec
            if spec is None or spec.health is None or rec.state is not UnitState.RUNNING or name in self._probing:
                continue
            if probe_due(spec.health, rec.health_checked_at, rec.started_at or now, now):
                self._probing.add(name)
                self._task_group.start_soon(self._probe, rec)

    async def _probe(self, rec: UnitRecord) -> None:
        spec = rec.spec
        assert spec is not None and spec.health is not None
        try:
            env = {**os.environ, **spec.env_dict}
            result = await probe(spec.health, reaper=self.reaper, cwd=spec.cwd, env=env)
            self._probes[rec.name] = (result.ok, self.clock(), rec.pid)
        finally:
            self._probing.discard(rec.name)
        self.poke()

    def _fold_probes(self, records: dict[str, UnitRecord], now: float) -> dict[str, UnitRecord]:
        probes, self._probes = self._probes, {}
        for name, (ok, at, pid) in probes.items():
            rec = records.get(name)
            if rec is None or rec.spec is None or rec.spec.health is None or rec.pid != pid:
                continue  # the process it probed is gone
            health, failures = next_health(rec.health, rec.health_failures, ok, rec.spec.health, rec.started_at or at, at)
            records[name] = attrs.evolve(rec, health=health, health_failures=failures, health_checked_at=at)
        return records

    def health_wake(self) -> float | None:
        """The next time a health probe falls due (the loop must wake for it)."""
        times = [
            next_probe_at(r.spec.health, r.health_checked_at, r.started_at or 0.0)
            for r in self.records.values()
            if r.spec is not None and r.spec.health is not None and r.state is UnitState.RUNNING
        ]
        return min(times, default=None)

    # --- logs -----------------------------------------------------------------------------------

    async def _check_logs_periodically(self) -> None:
        """A daemon checks unit logs on a timer of their own: passes can be minutes apart.

        Only the files written since the last check are looked at (when that is known).
        """
        written = WrittenFiles(str(self.settings.state_dir / LOGS_DIR))
        try:
            while True:
                await self._rotate_logs(written.take())
                await anyio.sleep(LOG_CHECK_INTERVAL)
        finally:
            written.close()

    async def _rotate_logs(self, written: set[str] | None = None) -> None:
        """Rotate the oversized logs among `written` (file names), or among all when it is None."""
        if written is not None and not written:
            return
        limits = {name: rec.spec.logs for name, rec in self.records.items() if rec.spec is not None}

        def rotate() -> None:
            for path, settings in oversized(self.settings.state_dir, limits, written):
                rotate_if_needed(path, settings)

        await anyio.to_thread.run_sync(rotate)

    # --- start and stop -----------------------------------------------------------------------

    def _announce_start(self, once: bool) -> None:
        """Record who we are; the first pass adopts what still runs (`unit.adopted`)."""
        self._started_at = self.clock()
        self._describe_self(running=not once)
        self.events.append("reconciler.started", pid=os.getpid(), once=once, version=__version__)

    async def _announce_stop(self, once: bool) -> None:
        def write() -> None:
            self._describe_self(running=False)
            self.events.append("reconciler.stopped", pid=os.getpid(), once=once)

        await anyio.to_thread.run_sync(write)

    def _describe_self(self, *, running: bool) -> None:
        self.ledger.set_reconciler(
            os.getpid(),
            __version__,
            str(self.settings.specs_dir),
            str(self.settings.state_dir),
            self._started_at,
            running=running,
        )

    def converged(self) -> bool:
        """For --once's exit code: no invalid spec, and no unit failed, backing off or in doubt."""
        if self.last_pass is None or self.last_pass.problems:
            return False
        unsettled = (UnitState.FAILED, UnitState.BACKOFF, UnitState.UNKNOWN, UnitState.STARTING, UnitState.STOPPING)
        return not any(rec.state in unsettled for rec in self.records.values())


def _stop_settings(action: Action, before: UnitRecord | None) -> StopSettings:
    """How to stop a unit: by the rules of the spec it was started with."""
    old_spec = before.spec if before is not None and before.spec is not None else action.spec
    return old_spec.stop if old_spec is not None else StopSettings()
