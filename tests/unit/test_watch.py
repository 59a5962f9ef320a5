"""SpecWatcher over a real directory and the kernel's inotify: which file operations reach the loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import anyio
import pytest
from watchdog.events import FileSystemEvent

from reconciler import watch
from reconciler.watch import SpecWatcher

DEADLINE = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Seen:
    """Every event watchdog hands the watcher, and every path the loop is told of."""

    def __init__(self) -> None:
        self.events: list[FileSystemEvent] = []
        self.told: set[str] = set()
        self.changed = anyio.Event()

    async def on_change(self, paths: set[str]) -> None:
        self.told |= paths
        self.changed.set()

    async def until_told(self, path: Path) -> None:
        with anyio.fail_after(DEADLINE):
            while str(path) not in self.told:
                await self.changed.wait()
                self.changed = anyio.Event()

    async def write_until_told(self, path: Path, text: str) -> None:
        """Write `path` again until it is reported: for a watch that may only start after a first write."""
        with anyio.fail_after(DEADLINE):
            while str(path) not in self.told:
                path.write_text(text)
                with anyio.move_on_after(0.05):
                    await self.changed.wait()
                    self.changed = anyio.Event()


@pytest.fixture
async def seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Seen]:
    """A watcher on tmp_path/specs, running and known to be watching (a first file was reported)."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for i in range(20):
        (specs / f"unit{i}.toml").write_text(f'name = "unit{i}"\ncommand = ["true"]\n')
    found = Seen()
    handle = watch._Poker.on_any_event

    def spy(self, event: FileSystemEvent) -> None:
        found.events.append(event)
        handle(self, event)

    monkeypatch.setattr(watch._Poker, "on_any_event", spy)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(SpecWatcher(specs, found.on_change).run)
        await found.write_until_told(specs / "ready.toml", "")
        yield found
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_reading_spec_files_makes_no_event(seen: Seen, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    read = sorted(specs.glob("unit*.toml"))  # not ready.toml: events of its last write may still trail in
    seen.events.clear()
    for path in read:
        with open(path, "rb") as f:  # as the reader does, on every parse
            f.read()
    marker = specs / "marker.toml"
    marker.write_text("")  # queued after anything the reads made
    await seen.until_told(marker)
    named = {os.fsdecode(e.src_path) for e in seen.events if not e.is_directory}
    assert str(marker) in named
    assert named.isdisjoint(map(str, read))


@pytest.mark.anyio
async def test_a_file_renamed_into_place_is_told_by_its_own_events_alone(seen: Seen, tmp_path: Path) -> None:
    """No event about the directory: one arriving in a wake-up of its own would name no file."""
    specs = tmp_path / "specs"
    seen.events.clear()
    staged = specs / "new.toml.tmp"
    staged.write_text('name = "new"\n')
    os.rename(staged, specs / "new.toml")
    await seen.until_told(specs / "new.toml")
    assert seen.events
    assert not [e for e in seen.events if e.is_directory]


def test_renames_are_held_back_briefly_for_pairing():
    """watchdog's queue behind a rename whose two halves were read apart sleeps this long (0.5 s by default)."""
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    assert InotifyMoveEventGrouper()._queue.delay == watch.MOVE_PAIRING_DELAY <= 0.01


@pytest.mark.anyio
async def test_a_spec_moved_out_of_the_directory_is_reported_and_what_follows_too(seen: Seen, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    os.rename(specs / "unit5.toml", tmp_path / "unit5.toml")  # a half rename: watchdog waits for its pair
    (specs / "after.toml").write_text('name = "after"\n')
    await seen.until_told(specs / "after.toml")
    assert str(specs / "unit5.toml") in seen.told


@pytest.mark.anyio
async def test_every_way_of_changing_a_spec_is_reported(seen: Seen, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    staged = tmp_path / "staged.toml"
    staged.write_text('name = "new"\n')
    os.rename(staged, specs / "new.toml")  # renamed into place, as git and editors do
    await seen.until_told(specs / "new.toml")

    with open(specs / "unit1.toml", "r+b") as f:  # rewritten in place
        f.write(b"#")
    await seen.until_told(specs / "unit1.toml")

    (specs / "unit2.toml").unlink()
    await seen.until_told(specs / "unit2.toml")

    os.rename(specs / "unit3.toml", specs / "unit3.toml.off")  # renamed away
    await seen.until_told(specs / "unit3.toml")

    os.chmod(specs / "unit4.toml", 0o600)  # its permissions decide whether it is trusted
    await seen.until_told(specs / "unit4.toml")

    (specs / "team").mkdir()  # a new directory is watched too, once its creation is seen
    await seen.write_until_told(specs / "team" / "api.toml", 'name = "api"\n')


@pytest.mark.anyio
@pytest.mark.parametrize("link_at", ["specs", "parent"])
async def test_a_revision_swapped_in_by_a_symbolic_link_is_watched(tmp_path: Path, link_at: str) -> None:
    """git-sync and Kubernetes volumes deploy by renaming a new link over the old one."""
    for rev in ("rev1", "rev2"):
        (tmp_path / rev / "specs").mkdir(parents=True)
    target = "rev1/specs" if link_at == "specs" else "rev1"
    (tmp_path / "current").symlink_to(target)
    specs = tmp_path / "current" if link_at == "specs" else tmp_path / "current" / "specs"
    found = Seen()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(SpecWatcher(specs, found.on_change).run)
        await found.write_until_told(specs / "ready.toml", "")

        (tmp_path / "next").symlink_to(target.replace("rev1", "rev2"))
        os.rename(tmp_path / "next", tmp_path / "current")

        # The swap is seen, and files of the new revision are reported: not only at the next
        # resync, as when the watch stayed where the old link led.
        await found.write_until_told(specs / "web.toml", 'name = "web"\n')
        assert (tmp_path / "rev2" / "specs" / "web.toml").exists()
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_directory_linked_into_the_tree_is_watched_as_the_reader_reaches_it(seen: Seen, tmp_path: Path) -> None:
    """The reader follows a symbolic link to a directory; watchdog's recursive watch does not."""
    specs = tmp_path / "specs"
    shared = tmp_path / "shared"
    (shared / "deeper").mkdir(parents=True)
    (specs / "team").symlink_to(shared)  # added while the watcher runs: watched from its next wake-up
    (shared / "nested").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()

    # Named by the paths the reader reads them at, not where the links lead.
    await seen.write_until_told(specs / "team" / "api.toml", 'name = "api"\n')
    await seen.write_until_told(specs / "team" / "deeper" / "db.toml", 'name = "db"\n')
    await seen.write_until_told(specs / "team" / "nested" / "cache.toml", 'name = "cache"\n')
    assert not any(path.startswith(str(shared)) or "elsewhere" in path for path in seen.told)


@pytest.mark.anyio
async def test_a_directory_link_in_the_tree_repointed_is_watched_where_it_now_leads(seen: Seen, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    for revision in ("one", "two"):
        (tmp_path / revision).mkdir()
    (specs / "team").symlink_to(tmp_path / "one")
    await seen.write_until_told(specs / "team" / "api.toml", 'name = "api"\n')

    (specs / ".next").symlink_to(tmp_path / "two")
    os.rename(specs / ".next", specs / "team")  # a link renamed over the old one, as deploy tools do

    await seen.write_until_told(specs / "team" / "web.toml", 'name = "web"\n')
    assert (tmp_path / "two" / "web.toml").exists()
