"""The specs directory -> `Desired`: scanning, ignore rules, a stat cache, duplicate names, StrictModes.

Every `read()` returns a full snapshot. It is cheap when nothing changed: a file
whose stat is unchanged is not read or parsed again. When the directory cannot be
read in full, the snapshot says so (`complete=False`) so that nothing is stopped
for being absent.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from .cycles import dependency_cycles
from .errors import SpecError
from .model import SPEC_FORMATS, Desired, Spec, SpecProblem

# The parser (cattrs, PyYAML) is imported when a file must really be parsed: a
# process that finds every file unchanged (`--once`, `status`) never pays for it.

# Editor, download and backup leftovers: never specs, whatever their extension.
IGNORED_ENDINGS = ("~", ".swp", ".swx", ".tmp", ".part", ".bak", ".orig")
MAX_SPEC_BYTES = 1024 * 1024

StatKey = tuple[int, int, int, int, int, int, int]
Outcome = Spec | SpecProblem


def is_spec_name(name: str) -> bool:
    """Whether a directory entry's name can be a spec (dot-names never are, nor backups)."""
    return (
        not name.startswith(".")
        and not name.endswith(IGNORED_ENDINGS)
        and os.path.splitext(name)[1] in SPEC_FORMATS
    )


@functools.cache
def _parser() -> Callable[..., Spec]:
    """convert.parse_spec, imported on first use (an import statement per spec cost 2 µs)."""
    from .convert import parse_spec

    return parse_spec


def _read_up_to(fd: int, size: int) -> bytes:
    """The file's bytes, at most MAX_SPEC_BYTES + 1 (one more tells a file too large).

    Plain reads of the size its fstat gave plus one byte (a byte more tells a file
    that grew since): a buffered file object costs three more system calls per
    spec, and asking for the whole limit at once allocates a megabyte each time.
    """
    limit = MAX_SPEC_BYTES + 1
    ask = min(size, MAX_SPEC_BYTES) + 1
    chunks: list[bytes] = []
    total = 0
    while total < limit and (chunk := os.read(fd, min(ask, limit - total))):
        chunks.append(chunk)
        total += len(chunk)
        if len(chunk) == ask:
            ask = limit  # larger than its fstat said: the rest, up to the limit
    return b"".join(chunks)


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


@attrs.frozen
class _Cached:
    key: StatKey
    outcome: Outcome


@attrs.frozen
class _Scan:
    files: list[str]
    problems: list[SpecProblem]
    complete: bool
    linked_dirs: list[str] = attrs.field(factory=list)  # symbolic links followed to a directory not reached before


class SpecReader:
    """Reads a specs directory into `Desired`, re-parsing only files whose stat changed.

    `trusted_uids=None` turns the ownership/permission check off (tests, `validate`);
    the CLI passes {0, euid}. `parse_count` counts parses, so a cache hit is observable.
    """

    def __init__(
        self,
        specs_dir: Path | str,
        *,
        allow_insecure: bool = False,
        trusted_uids: frozenset[int] | None = None,
    ) -> None:
        self.specs_dir = os.path.abspath(specs_dir)
        self.allow_insecure = allow_insecure
        self.trusted_uids = trusted_uids
        self.parse_count = 0
        self._cache: dict[str, _Cached] = {}

    def seed(self, path: str, key: StatKey, spec: Spec) -> None:
        """Trust that `spec` is what the file at `path` with this stat key parses to.

        Lets a new process start from what an earlier one parsed (kept in the
        ledger): a file whose stat key still matches is not parsed again.
        """
        self._cache[path] = _Cached(key, spec)

    def fingerprints(self) -> dict[str, tuple[StatKey, Spec]]:
        """path -> (stat key, spec) of every file that currently parses to a valid spec."""
        return {path: (c.key, c.outcome) for path, c in self._cache.items() if isinstance(c.outcome, Spec)}

    def claimed_elsewhere(self, spec: Spec) -> bool:
        """Whether a file other than `spec`'s held a spec of the same name when last read."""
        return any(
            isinstance(c.outcome, Spec) and c.outcome.name == spec.name and path != spec.path
            for path, c in self._cache.items()
        )

    def on_dependency_cycles(self, specs: Iterable[Spec]) -> set[str]:
        """The names among `specs` that close a dependency cycle with what the other files held
        when last read: the files count, not the specs in force (a unit already on a cycle runs
        its last good spec while its file still closes the cycle)."""
        specs = list(specs)
        if not any(spec.depends_on for spec in specs):
            return set()  # a cycle through a unit leaves it by one of its dependencies
        files = {c.outcome.name: c.outcome for c in self._cache.values() if isinstance(c.outcome, Spec)}
        cycles = _cycles_among({**files, **{spec.name: spec for spec in specs}})
        return {spec.name for spec in specs if spec.name in cycles}

    def read(self) -> Desired:
        outcomes, scan = self._collect()
        return _assemble(outcomes.values(), scan.problems, scan.complete)

    def _collect(self) -> tuple[dict[str, Outcome], _Scan]:
        scan = _scan(self.specs_dir)
        checked_dirs: dict[str, str | None] = {}  # per pass: directory -> why it is insecure
        outcomes = {}
        for path in scan.files:
            outcome = self.read_file(path, checked_dirs)
            if outcome is not None:
                outcomes[path] = outcome
        self._cache = {path: entry for path, entry in self._cache.items() if path in outcomes}
        return outcomes, scan

    def read_file(self, path: str, checked_dirs: dict[str, str | None] | None = None) -> Outcome | None:
        """The spec in one file below the specs dir, or its problem; None if it vanished."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return SpecProblem(path, "broken symbolic link") if os.path.islink(path) else None
        except OSError as exc:
            return SpecProblem(path, f"cannot read: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return SpecProblem(path, "not a regular file")
        insecurity = self._insecurity(path, st, {} if checked_dirs is None else checked_dirs)
        if insecurity:
            return SpecProblem(path, f"insecure: {insecurity}")
        cached = self._cache.get(path)
        if cached is not None and cached.key == _stat_key(st):
            return cached.outcome
        return self._parse(path)

    def _parse(self, path: str) -> Outcome | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return SpecProblem(path, f"cannot read: {exc.strerror}")
        try:
            st = os.fstat(fd)  # the key of exactly what is read
            if not stat.S_ISREG(st.st_mode):
                return SpecProblem(path, "not a regular file")
            data = _read_up_to(fd, st.st_size)
        except OSError as exc:
            return SpecProblem(path, f"cannot read: {exc.strerror}")
        finally:
            os.close(fd)
        self.parse_count += 1
        outcome: Outcome
        if len(data) > MAX_SPEC_BYTES:
            outcome = SpecProblem(path, f"file is larger than {MAX_SPEC_BYTES} bytes")
        else:
            try:
                outcome = _parser()(data, path=path, specs_dir=self.specs_dir)
            except SpecError as exc:
                outcome = SpecProblem(path, exc.reason())
        self._cache[path] = _Cached(_stat_key(st), outcome)
        return outcome

    def _insecurity(self, path: str, st: os.stat_result, checked_dirs: dict[str, str | None]) -> str | None:
        """Why a file may not be trusted (sshd StrictModes): the file itself (a symlink's
        target), then each directory from its own up to the specs dir."""
        if self.allow_insecure or self.trusted_uids is None:
            return None
        return _unsafe("file", st, self.trusted_uids) or self._chain_insecurity(os.path.dirname(path), checked_dirs)

    def _chain_insecurity(self, directory: str, checked_dirs: dict[str, str | None]) -> str | None:
        """A directory and its parents up to the specs dir; memoised per pass."""
        if directory not in checked_dirs:
            problem = self._directory_insecurity(directory)
            parent = os.path.dirname(directory)
            if problem is None and directory != self.specs_dir and parent != directory:
                problem = self._chain_insecurity(parent, checked_dirs)
            checked_dirs[directory] = problem
        return checked_dirs[directory]

    def _directory_insecurity(self, directory: str) -> str | None:
        assert self.trusted_uids is not None
        try:
            st = os.stat(directory)
        except OSError as exc:
            return f"cannot check directory {directory}: {exc.strerror}"
        return _unsafe(f"directory {directory}", st, self.trusted_uids)


def _unsafe(what: str, st: os.stat_result, trusted_uids: frozenset[int]) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    writers = "others" if mode & stat.S_IWOTH else "group" if mode & stat.S_IWGRP else None
    if writers:
        return f"{what} is writable by {writers} (mode {mode:04o}); fix the permissions or use --allow-insecure-specs"
    if st.st_uid not in trusted_uids:
        return f"{what} is owned by uid {st.st_uid}; fix the ownership or use --allow-insecure-specs"
    return None


def _scan(root: str) -> _Scan:
    """Every spec-named file below `root` (following directory symlinks, once each)."""
    try:
        root_stat = os.stat(root)
    except FileNotFoundError:
        return _Scan([], [SpecProblem(root, "specs directory does not exist")], False)
    except OSError as exc:
        return _Scan([], [SpecProblem(root, f"cannot read the specs directory: {exc.strerror}")], False)
    if not stat.S_ISDIR(root_stat.st_mode):
        return _Scan([], [SpecProblem(root, "the specs path is not a directory")], False)
    files: list[str] = []
    problems: list[SpecProblem] = []
    linked_dirs: list[str] = []
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino)}
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue  # removed while we looked
                        if (st.st_dev, st.st_ino) not in seen_dirs:
                            seen_dirs.add((st.st_dev, st.st_ino))
                            pending.append(entry.path)
                            if entry.is_symlink():
                                linked_dirs.append(entry.path)
                    elif is_spec_name(entry.name):
                        files.append(entry.path)
        except FileNotFoundError:
            if directory == root:
                return _Scan([], [SpecProblem(root, "specs directory does not exist")], False)
        except OSError as exc:
            problems.append(SpecProblem(directory, f"cannot read directory: {exc.strerror}"))
    return _Scan(sorted(files), problems, complete=not problems, linked_dirs=linked_dirs)


def linked_directories(root: str) -> list[str]:
    """The directories below `root` that the reader reaches through a symbolic link (a recursive
    watch of `root` does not follow links), each by the path of the link it was reached through."""
    return _scan(root).linked_dirs


def _assemble(outcomes: Iterable[Outcome], problems: Iterable[SpecProblem], complete: bool) -> Desired:
    """Specs by name; a name claimed by several files, or a unit on a dependency cycle, is a problem in its file."""
    claims: dict[str, list[Spec]] = {}
    all_problems = list(problems)
    for outcome in outcomes:
        if isinstance(outcome, Spec):
            claims.setdefault(outcome.name, []).append(outcome)
        else:
            all_problems.append(outcome)
    specs = {}
    for name, claimants in sorted(claims.items()):
        if len(claimants) == 1:
            specs[name] = claimants[0]
            continue
        for spec in claimants:
            others = ", ".join(sorted(other.path for other in claimants if other is not spec))
            from .convert import quote

            all_problems.append(SpecProblem(spec.path, f"name: duplicate unit name {quote(name)} (also in {others})"))
    # A cycle could never start: each of its units would wait for the next for ever.
    for name, cycle in _cycles_among(specs).items():
        all_problems.append(SpecProblem(specs.pop(name).path, f"depends_on: {cycle}"))
    return Desired(
        specs=specs,
        problems=tuple(sorted(all_problems, key=lambda p: (p.path, p.error))),
        complete=complete,
    )


def _cycles_among(specs: dict[str, Spec]) -> dict[str, str]:
    """Each unit on a dependency cycle among `specs` -> the cycle, as its error says it."""
    return dependency_cycles({name: spec.depends_on for name, spec in specs.items()})


def validate_paths(
    paths: Iterable[Path | str],
    *,
    allow_insecure: bool = False,
    trusted_uids: frozenset[int] | None = None,
) -> tuple[list[Spec], list[SpecProblem]]:
    """Check files and directories as `reconciler validate` does, changing nothing.

    A directory is read like the specs directory. A file given by name is parsed
    whatever the ignore rules say (its extension must still be a known format);
    its parent directory stands in for the specs directory. Duplicate names are
    checked across everything given.
    """
    outcomes: dict[str, Outcome] = {}
    problems: list[SpecProblem] = []
    for given in paths:
        path = os.path.abspath(given)
        if os.path.isdir(path):
            reader = SpecReader(path, allow_insecure=allow_insecure, trusted_uids=trusted_uids)
            found, scan = reader._collect()
            outcomes.update(found)
            problems.extend(scan.problems)
        elif not os.path.lexists(path):
            problems.append(SpecProblem(path, "no such file or directory"))
        else:
            reader = SpecReader(os.path.dirname(path), allow_insecure=allow_insecure, trusted_uids=trusted_uids)
            outcome = reader.read_file(path)
            if outcome is not None:
                outcomes[path] = outcome
    desired = _assemble(outcomes.values(), problems, complete=True)
    return list(desired.specs.values()), list(desired.problems)
