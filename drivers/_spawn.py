"""Turning a Launch into a running process, directly or under the shim: checks, log files,
ids, and the spawn itself (a direct one in C where _compiled_spawn was built).

Checks run before anything is spawned so that a spec that can never start
fails with a permanent DriverError instead of a process that dies at once.
"""

from __future__ import annotations

import fcntl
import functools
import grp
import os
import pwd
import signal
import sys
import time
from pathlib import Path

import attrs

from reconciler.driver import Launch, spawning
from reconciler.errors import DriverError
from reconciler.model import Spec

from . import _linux, _posix_spawn
from ._keeper import RECORDS_KEPT

try:
    from ._compiled_spawn import spawn_logged
except ImportError:  # installed without a C compiler: _spawn_logged does the same in Python
    spawn_logged = None

SHELL = "/bin/sh"
SHIM = str(Path(__file__).with_name("shim.sh"))
LOG_MODE = 0o640
# posix_spawn resets these to SIG_DFL in the child: every signal a handler may catch.
CATCHABLE_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

# Sets the ids of a user unit, then execs the shim. Python ignores SIGPIPE and
# SIGXFSZ at start-up and ignored signals survive exec, so they are reset first.
_LAUNCHER = """\
import os, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
gid, uid, groups = sys.argv[1:4]
os.setgroups([int(g) for g in groups.split(",") if g])
if gid:
    os.setresgid(int(gid), int(gid), int(gid))
if uid:
    os.setresuid(int(uid), int(uid), int(uid))
os.execv(sys.argv[4], sys.argv[4:])
"""


@attrs.frozen
class Ids:
    """The credentials a user unit runs with; None fields are inherited."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    # The user's own HOME, USER, LOGNAME and SHELL (from passwd), as login and systemd's User= set them.
    login_env: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Spawned:
    """A freshly spawned shim: our child, pinned by a pidfd so it cannot be mistaken.

    The caller owns both fds: the pidfd outlives the start (stopping waits on the shim).
    """

    pid: int
    start_ticks: int
    pidfd: int
    report_fd: int  # read end of the pipe the shim reports the command's pid on
    argv: tuple[str, ...]  # the shim's own argv, to recognise it in /proc/PID/cmdline


def unit_environment(spec: Spec, ids: Ids | None = None) -> dict[bytes, bytes]:
    """The reconciler's environment, then the unit user's login variables, then the spec's env
    (as bytes: the form exec takes). A unit run as another user never sees root's HOME."""
    login = ids.login_env if ids is not None else ()
    overlay = {**dict(login), **spec.env_dict}
    return {**_own_environment(), **{os.fsencode(k): os.fsencode(v) for k, v in overlay.items()}}


@functools.cache
def _own_environment() -> dict[bytes, bytes]:
    """The reconciler's environment, read once (it never changes it): each walk of os.environb
    costs a start a few dozen microseconds of decoding and encoding."""
    return dict(os.environb)


def check_cwd(spec: Spec) -> None:
    if not os.path.isdir(spec.cwd):
        raise DriverError(f"cwd: no such directory: {spec.cwd}", transient=False)


def find_program(spec: Spec, env: dict[bytes, bytes]) -> str:
    """The path exec is given for argv[0], resolved as the unit's shell would: as written if it has
    a slash (exec resolves it in the unit's cwd), else the first match on the unit's own PATH.
    Raises a permanent DriverError when there is none."""
    if not spec.command or not spec.command[0]:
        raise DriverError("command: empty", transient=False)
    program = spec.command[0]
    if "/" in program:
        path = os.path.join(spec.cwd, program)
        found = program if os.path.isfile(path) and os.access(path, os.X_OK) else None
    else:
        import shutil  # with bz2 and lzma, ~4 ms of start-up that units started by path never need

        search = os.fsdecode(env.get(b"PATH", os.fsencode(os.defpath)))
        found = shutil.which(program, path=search)
    if found is None:
        raise DriverError(f"command not found: {program}", transient=False)
    return found


def resolve_ids(spec: Spec) -> Ids | None:
    """The uid/gid/groups for spec.user/spec.group, or None when neither is set."""
    if spec.user is None and spec.group is None:
        return None
    if os.geteuid() != 0:
        raise DriverError("user/group: the reconciler must run as root to change them", transient=False)
    uid = gid = None
    groups: tuple[int, ...] = ()
    login_env: tuple[tuple[str, str], ...] = ()
    if spec.group is not None:
        gid = _lookup(grp.getgrnam, grp.getgrgid, spec.group, "group").gr_gid
    if spec.user is not None:
        user = _lookup(pwd.getpwnam, pwd.getpwuid, spec.user, "user")
        uid = user.pw_uid
        gid = user.pw_gid if gid is None else gid
        groups = tuple(os.getgrouplist(user.pw_name, gid))
        login_env = (("HOME", user.pw_dir), ("USER", user.pw_name), ("LOGNAME", user.pw_name), ("SHELL", user.pw_shell))
    return Ids(uid=uid, gid=gid, groups=groups, login_env=login_env)


def _lookup(by_name, by_id, value: str, what: str):
    try:
        return by_name(value)
    except KeyError:
        pass
    if value.isdigit():
        try:
            return by_id(int(value))
        except KeyError:
            pass
    raise DriverError(f"{what}: unknown {what}: {value}", transient=False)


def prepare_status_file(state_dir: Path, unit: str, ids: Ids | None) -> Path:
    """STATE/run/<unit>/status; the directory belongs to the unit's user so its shim can write there.

    Shims append their records (truncating a file costs a filesystem far more
    than appending to it). The file is removed when it has grown past
    RECORDS_KEPT bytes, and whenever the unit runs under other ids: the file of
    an earlier run may belong to a user this shim cannot write as.
    """
    status = status_file(state_dir, unit)
    run_dir = status.parent
    try:
        _make_dir(run_dir)
        if ids is not None:
            os.chown(run_dir, -1 if ids.uid is None else ids.uid, -1 if ids.gid is None else ids.gid)
        try:
            if ids is not None or os.stat(status).st_size > RECORDS_KEPT:
                os.unlink(status)
        except FileNotFoundError:
            pass
    except OSError as exc:
        raise DriverError(f"cannot prepare the exit record {status}: {exc.strerror}") from exc
    return status


def status_file(state_dir: Path, unit: str) -> Path:
    """Where a unit's exit records are appended (by its shims, or by the exit keeper)."""
    return state_dir / "run" / unit / "status"


def shim_argv(status_file: Path, token: str, spec: Spec) -> tuple[str, ...]:
    return (SHELL, SHIM, str(status_file), token, spec.cwd, *spec.command)


def open_log(path: Path) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, LOG_MODE)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, LOG_MODE)
    except OSError as exc:
        raise DriverError(f"cannot open log file {path}: {exc.strerror}") from exc


def _make_dir(path: Path) -> None:
    """mkdir -p in one system call when only the last directory may be missing, as on every start but the first."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)


def spawn_shim(launch: Launch, argv: tuple[str, ...], env: dict[bytes, bytes], ids: Ids | None) -> Spawned:
    """posix_spawn the shim in a new session: fd 0 the report pipe, 1 and 2 the logs.

    The shim moves the pipe to fd 3 and opens /dev/null as stdin itself.
    Every catchable signal is reset to default and none is blocked.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    fds = [_above_stdio(write_fd)]
    try:
        fds.append(_above_stdio(open_log(launch.stdout_path)))
        fds.append(_above_stdio(open_log(launch.stderr_path)))
        path, spawn_argv = _program(argv, ids)
        pid = os.posix_spawn(
            path,
            spawn_argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(fds, (0, 1, 2))],
            setsid=True,
            setsigmask=(),
            setsigdef=CATCHABLE_SIGNALS,
        )
    except OSError as exc:
        os.close(read_fd)
        raise DriverError(f"cannot spawn the shim: {exc}") from exc
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    pidfd, start_ticks = pin_child(pid)
    os.set_blocking(read_fd, False)
    return Spawned(pid=pid, start_ticks=start_ticks, pidfd=pidfd, report_fd=read_fd, argv=argv)


def pin_child(pid: int) -> tuple[int, int]:
    """A pidfd on a child just spawned, and its start ticks, once /proc shows its new argv.

    Our unreaped child: nothing can reap it before this runs (no await since the
    spawn, or, from a worker thread, inside `spawning()`).

    posix_spawn returns as soon as the exec is past its point of no return; the
    kernel lays out the new argv and environment a moment later (on busy CPUs,
    one start in ten or more is caught in between). Until then /proc/PID/cmdline
    reads empty: the start is not yet what anyone looking at /proc would call running.
    """
    pidfd = os.pidfd_open(pid)
    stat = _linux.read_stat(pid)
    assert stat is not None, "a child we have not reaped always has a /proc entry"
    delay = 0.00005
    # cmdline answers where the stat's field does not (a child that exec'd a setuid program).
    while not (stat.args_published or stat.zombie or _linux.read_cmdline(pid)):
        time.sleep(delay)
        delay = min(delay * 2, 0.001)
        stat = _linux.read_stat(pid)
        assert stat is not None, "a child we have not reaped always has a /proc entry"
    return pidfd, stat.start_ticks


@attrs.frozen
class Direct:
    """A command spawned without a shim: our child, exec'd, pinned by a pidfd the caller owns."""

    pid: int
    start_ticks: int
    pidfd: int


def direct_available() -> bool:
    """Whether commands can be started without the shim here.

    Without the shim nobody writes an exit record, so the kernel must keep the
    exit status for us (PIDFD_GET_INFO) and libc must change directory in the child.
    """
    return _posix_spawn.available() and _linux.pidfd_info_supported()


def spawn_direct(launch: Launch) -> Direct:
    """posix_spawn the unit's command itself in a new session; it has exec'd when this returns.

    The command is the session and group leader. A missing command or cwd is a
    permanent DriverError; an exec that fails otherwise is a transient one.
    Safe in a worker thread: no reap comes between the spawn and its pidfd.
    """
    spec = launch.spec
    env = unit_environment(spec)
    program = os.fsencode(find_program(spec, env))
    argv = [os.fsencode(arg) for arg in spec.command]
    envp = [key + b"=" + value for key, value in env.items()]
    cwd = os.fsencode(spec.cwd)
    try:
        with spawning():
            started = None
            if spawn_logged is not None:
                started = spawn_logged(program, argv, envp, cwd, bytes(launch.stdout_path), bytes(launch.stderr_path))
            if started is None:  # not compiled here, or a log file it could not open: it started nothing
                started = _spawn_logged(program, argv, envp, cwd, launch)
    except OSError as exc:
        check_cwd(spec)
        # As under the shim: the file may be fixed without the spec changing, so it is retried.
        raise DriverError(f"{spec.command[0]}: could not be executed: {exc.strerror}") from exc
    pid, pidfd, start_ticks = started
    return Direct(pid=pid, start_ticks=start_ticks, pidfd=pidfd)


def _spawn_logged(program: bytes, argv: list[bytes], envp: list[bytes], cwd: bytes, launch: Launch) -> tuple[int, int, int]:
    """What the compiled spawn_logged does, in Python: (pid, pidfd, start ticks).

    A log file that cannot be opened, even once its directory is made, is a DriverError.
    """
    fds = []
    try:
        fds.append(_above_stdio(open_log(launch.stdout_path)))
        fds.append(_above_stdio(open_log(launch.stderr_path)))
        pid = _posix_spawn.spawn(program, argv, envp, cwd=cwd, stdout=fds[0], stderr=fds[1])
    finally:
        for fd in fds:
            os.close(fd)
    return (pid, *pin_child(pid))


def _program(argv: tuple[str, ...], ids: Ids | None) -> tuple[str, list[str]]:
    if ids is None:
        return argv[0], list(argv)
    groups = ",".join(map(str, ids.groups)) if ids.uid is not None else ""
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    launcher += ["" if ids.gid is None else str(ids.gid), "" if ids.uid is None else str(ids.uid), groups]
    return sys.executable, launcher + list(argv)


def _above_stdio(fd: int) -> int:
    """The same file at a descriptor >= 3: sources below 3 would be clobbered by the dup2s onto 0..2."""
    if fd > 2:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new
