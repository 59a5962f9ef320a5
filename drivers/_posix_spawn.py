"""posix_spawn through the C library, with the file actions os.posix_spawn lacks.

Starting a unit's command directly (no shell in between) needs a change of
directory and the closing of every inherited descriptor in the child; glibc
has both as file actions (`addchdir_np`, 2.29; `addclosefrom_np`, 2.34) but
Python 3.11 exposes neither. Like os.posix_spawn, glibc's spawn returns only
once the child has exec'd, or with the errno of the failed exec (the child is
then already reaped): a returned pid is a running command.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from typing import Sequence

_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
# Opaque glibc structures, sized generously (x86-64: 80, 336 and 128 bytes).
_ACTIONS_SIZE, _ATTR_SIZE, _SIGSET_SIZE = 256, 1024, 256


@functools.cache
def _libc() -> tuple[ctypes.PyDLL, ctypes.CDLL] | None:
    """glibc with the spawn calls this module needs, or None (musl, old glibc: the caller falls back).

    Two handles on it: the setup calls take microseconds and keep the GIL (PyDLL), where
    letting it go and taking it back made each wait on the other threads' Python; only
    posix_spawn itself, which waits for the child's exec, lets it go (CDLL).
    """
    try:
        # The C library this process already runs on: find_library("c") would run ldconfig.
        setup, spawner = ctypes.PyDLL(None, use_errno=True), ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    needed = ("posix_spawn", "posix_spawn_file_actions_addchdir_np", "posix_spawn_file_actions_addclosefrom_np")
    if not all(hasattr(setup, name) for name in needed):
        return None
    return setup, spawner


@functools.cache
def _attributes() -> ctypes.Array[ctypes.c_char]:
    """The spawn attributes every start shares (read only by posix_spawn): a new session, every
    catchable signal at its default action, none blocked."""
    libc, _ = _libc()  # type: ignore[misc]
    attr = _buffer(_ATTR_SIZE)
    _check(libc.posix_spawnattr_init(attr), "spawn attributes")
    no_signals, all_signals = _buffer(_SIGSET_SIZE), _buffer(_SIGSET_SIZE)
    libc.sigemptyset(no_signals)
    libc.sigfillset(all_signals)
    # SIGKILL and SIGSTOP cannot be set: sigdelset them so the call never fails on them.
    for sig in (signal.SIGKILL, signal.SIGSTOP):
        libc.sigdelset(all_signals, int(sig))
    _check(libc.posix_spawnattr_setsigmask(attr, no_signals), "signal mask")
    _check(libc.posix_spawnattr_setsigdefault(attr, all_signals), "default signals")
    flags = _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSID
    _check(libc.posix_spawnattr_setflags(attr, ctypes.c_short(flags)), "spawn flags")
    return attr


def available() -> bool:
    return _libc() is not None


def _buffer(size: int) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(size)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(result, f"{what}: {os.strerror(result)}")


def spawn(
    path: bytes,
    argv: Sequence[bytes],
    env: Sequence[bytes],
    *,
    cwd: bytes,
    stdout: int,
    stderr: int,
    stdin: int | None = None,
) -> int:
    """Start `path` in `cwd`, in a new session, with stdio on the given fds (stdin: /dev/null if None).

    Every catchable signal starts with its default action and none is blocked;
    no descriptor but 0, 1 and 2 is inherited. Returns the pid once the exec
    has happened; raises OSError with the exec's (or chdir's) errno otherwise.
    """
    libcs = _libc()
    assert libcs is not None, "callers check available() first"
    libc, spawner = libcs
    attr = _attributes()
    actions = _buffer(_ACTIONS_SIZE)
    _check(libc.posix_spawn_file_actions_init(actions), "file actions")
    try:
        _check(libc.posix_spawn_file_actions_adddup2(actions, stdout, 1), "stdout")
        _check(libc.posix_spawn_file_actions_adddup2(actions, stderr, 2), "stderr")
        if stdin is None:
            _check(libc.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDONLY, 0), "stdin")
        else:
            _check(libc.posix_spawn_file_actions_adddup2(actions, stdin, 0), "stdin")
        _check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3), "closefrom")
        _check(libc.posix_spawn_file_actions_addchdir_np(actions, cwd), "cwd")
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        c_env = (ctypes.c_char_p * (len(env) + 1))(*env, None)
        pid = ctypes.c_int()
        _check(spawner.posix_spawn(ctypes.byref(pid), path, actions, attr, c_argv, c_env), "spawn")
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
