"""The driver test harness: one instance per driver this machine can run.

Each test gets a `harness` running inside an anyio (asyncio) event loop with the
core's Reaper task collecting children, a temporary state directory, and a
finalizer that kills the process group of every unit and helper process the
test started. Adding a driver (or a way of starting it) to the behaviour suite
is one line in KITS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

import anyio
import attrs
import pytest

from reconciler.driver import Driver, Launch, driver_names, load_driver_class
from reconciler.model import Handle, Spec
from reconciler.reaper import Reaper
from tests.conftest import process_stat


def _posix_recycled(handle: Handle, pid: int, start_ticks: int) -> Handle:
    """`handle` as if its process had started one tick before `pid`'s, pid and group leader alike."""
    older = start_ticks - 1
    data = {**handle.data, "start_ticks": older, "pgid": pid}
    if data["shim_pid"] is not None:
        data.update(shim_pid=pid, shim_start_ticks=older)
    return attrs.evolve(handle, pid=pid, data=data)


@attrs.frozen
class Kit:
    """What the suite needs to know about one driver beyond its public verbs."""

    driver: str
    # Forge a handle whose pid now belongs to `pid` (a group leader that started at `start_ticks`).
    recycled: Callable[[Handle, int, int], Handle]
    resident: bool = False  # started as by a daemon (Launch.resident), not as by --once
    # What the kit changes in the driver's modules while a test runs (a way of installing it).
    variant: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext


@contextlib.contextmanager
def _posix_without_compiled_spawn() -> Iterator[None]:
    """The posix driver as installed where no C compiler was found: direct starts in Python."""
    from reconciler_drivers import _spawn

    compiled, _spawn.spawn_logged = _spawn.spawn_logged, None
    try:
        yield
    finally:
        _spawn.spawn_logged = compiled


KITS: dict[str, Kit] = {
    "posix": Kit("posix", recycled=_posix_recycled),
    "posix-resident": Kit("posix", recycled=_posix_recycled, resident=True),
    "posix-resident-python": Kit("posix", recycled=_posix_recycled, resident=True, variant=_posix_without_compiled_spawn),
}


def process_start_ticks(pid: int) -> int | None:
    fields = process_stat(pid)
    return None if fields is None else int(fields[19])


def children() -> list[int]:
    """This process's children, zombies included."""
    found = []
    for name in os.listdir("/proc"):
        fields = process_stat(int(name)) if name.isdigit() else None
        if fields is not None and int(fields[1]) == os.getpid():
            found.append(int(name))
    return found


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (orphans' zombies may linger unreaped on this machine)."""
    fields = process_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.005, what: str = "condition"
) -> None:
    """Poll `predicate` until it is true (the event loop runs meanwhile); fail with `what` at the deadline."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(interval)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Harness:
    def __init__(self, kit: Kit, root: Path) -> None:
        self.kit = kit
        self.driver_name = kit.driver
        self.driver_class = load_driver_class(kit.driver)
        self.root = root
        self.state_dir = root / "state"
        self.work = root / "work"
        self.work.mkdir()
        self.drivers: list[Driver] = []
        self.driver = self.new_driver()
        self._groups: set[int] = set()
        self._pids: set[int] = set()
        self._unrelated_ticks: dict[int, int] = {}

    alive = staticmethod(process_alive)
    start_ticks = staticmethod(process_start_ticks)
    wait_until = staticmethod(wait_until)

    def new_driver(self) -> Driver:
        """Another instance on the same state directory, as after a reconciler restart."""
        driver = self.driver_class(self.state_dir)
        self.drivers.append(driver)
        return driver

    def spec(self, command: tuple[str, ...] | list[str], *, name: str = "unit", cwd: Path | None = None,
             env: dict[str, str] | None = None, **fields) -> Spec:
        return Spec(
            name=name,
            command=tuple(command),
            cwd=str(cwd or self.work),
            path=str(self.root / f"{name}.toml"),
            env=env or {},
            driver=self.driver_name,
            **fields,
        )

    def launch(self, spec: Spec) -> Launch:
        logs = self.state_dir / "logs"
        return Launch(
            spec=spec,
            stdout_path=logs / f"{spec.name}.out",
            stderr_path=logs / f"{spec.name}.err",
            resident=self.kit.resident,
        )

    async def start(self, command, *, driver: Driver | None = None, **spec_fields) -> Handle:
        handle = await (driver or self.driver).start(self.launch(self.spec(command, **spec_fields)))
        self.track(handle.pid)
        return handle

    def track(self, pid: int | None) -> None:
        """Remember a process (and its group) to kill at teardown."""
        if pid is None:
            return
        self._pids.add(pid)
        try:
            self._groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass

    def spawn_unrelated(self, argv: list[str]) -> int:
        """A process of the test's own (its own process group), not started by any driver."""
        pid = os.posix_spawnp(argv[0], argv, os.environ, setpgroup=0)
        # Unreaped until the next await, so /proc still has it even if it exited.
        self._unrelated_ticks[pid] = process_start_ticks(pid)
        self.track(pid)
        return pid

    def recycled(self, handle: Handle, pid: int) -> Handle:
        """`handle` forged as if its pid had been reused by `pid`, a process from spawn_unrelated."""
        return self.kit.recycled(handle, pid, self._unrelated_ticks[pid])

    def gate(self, then: str) -> tuple[str, ...]:
        """A shell command that waits for `release()` (a file appearing), then runs `then`."""
        return ("/bin/sh", "-c", f"while [ ! -e release ]; do sleep 0.01; done; {then}")

    def release(self) -> None:
        (self.work / "release").touch()

    def kill_all(self) -> list[int]:
        for pgid in self._groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return sorted(self._pids)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _driver_params() -> Iterator:
    installed = set(driver_names())
    for name, kit in KITS.items():
        marks = [] if kit.driver in installed else [pytest.mark.skip(reason=f"driver {kit.driver} is not installed")]
        yield pytest.param(kit, marks=marks, id=name)


@pytest.fixture(params=list(_driver_params()))
async def harness(request, tmp_path: Path, anyio_backend) -> Harness:
    async with running_harness(request.param, tmp_path) as h:
        yield h


@contextlib.asynccontextmanager
async def running_harness(kit: Kit, root: Path):
    """A harness for `kit` beside a Reaper task; every process it started is dead when this exits."""
    reason = load_driver_class(kit.driver).available()
    if reason is not None:
        pytest.skip(f"driver {kit.driver} cannot run here: {reason}")
    with kit.variant():
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(Reaper().run)
            h = Harness(kit, root)
            try:
                yield h
            finally:
                pids = h.kill_all()
                for driver in h.drivers:
                    await driver.aclose()
                await wait_until(lambda: not any(map(process_alive, pids)), what="the test's processes to die")
                # Helpers of the driver's own (an exit keeper) end once their units have: all reaped here.
                try:
                    await wait_until(lambda: not children(), what="the drivers' helpers to exit")
                finally:
                    for pid in children():
                        os.kill(pid, signal.SIGKILL)
                tasks.cancel_scope.cancel()


if sys.platform != "linux":  # the suite reads /proc to check what drivers claim
    collect_ignore_glob = ["test_*.py"]
