"""Process facts read straight from the Linux kernel: /proc files and pidfds.

Every function asks the kernel at the moment it is called; nothing here
remembers whether a process runs. The boot id is constant for the life of
this process (a reboot ends it), so it is read once.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import struct

from typing import NamedTuple

# struct pidfd_info (include/uapi/linux/pidfd.h): 64 bytes in its first version.
_PIDFD_INFO_SIZE = 64
_PIDFD_INFO_EXIT = 1 << 3
_PIDFD_INFO_EXIT_CODE_OFFSET = 60
# _IOWR(PIDFS_IOCTL_MAGIC=0xFF, 11, struct pidfd_info)
PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11


class ProcStat(NamedTuple):
    """The fields of /proc/PID/stat the driver needs (see proc_pid_stat(5)).

    A NamedTuple, not attrs: the exit keeper imports this module and starts faster without it.
    """

    pid: int
    state: str  # "R", "S", "Z", ...
    pgid: int  # 0 (as sid) if read while the process was being reaped
    sid: int
    start_ticks: int  # field 22: start time after boot, in clock ticks
    later: bytes  # fields 23..52 unsplit: most reads never need them

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def exit_status(self) -> int:
        """Field 52: the wait status of a zombie; 0 for a live process or unless can_read_exit_status()."""
        if not self.zombie:
            return 0
        fields = self.later.split()
        return int(fields[29]) if len(fields) > 29 else 0

    @property
    def args_published(self) -> bool:
        """Whether an exec has laid out the new argv and environment (field 51, env_end, is set).

        Shown only to readers allowed to ptrace the process (its parent, root); others read 0.
        """
        fields = self.later.split()
        return len(fields) > 28 and fields[28] != b"0"


def read_stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat parsed, or None if there is no such process."""
    raw = _read_proc_file(f"/proc/{pid}/stat")
    if raw is None:
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it start past the last ")".
    rest = raw[raw.rindex(b")") + 2 :].split(None, 20)
    return ProcStat(
        pid=pid,
        state=rest[0].decode(),
        pgid=int(rest[2]),
        sid=int(rest[3]),
        start_ticks=int(rest[19]),
        later=rest[20] if len(rest) > 20 else b"",
    )


def can_read_exit_status() -> bool:
    """The kernel shows a zombie's exit status only to those allowed to ptrace it: root always."""
    return os.geteuid() == 0


def read_cmdline(pid: int) -> bytes | None:
    """The raw NUL-separated argv of a process, or None if it is gone."""
    return _read_proc_file(f"/proc/{pid}/cmdline")


def _read_proc_file(path: str) -> bytes | None:
    """A small /proc file in one read (raw descriptors: a buffered file object costs twice as much)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        chunks = [os.read(fd, 4096)]
        while len(chunks[-1]) == 4096:
            chunks.append(os.read(fd, 4096))
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


@functools.cache
def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def open_verified_pidfd(pid: int, start_ticks: int) -> int | None:
    """A pidfd on `pid` if it is still the process that started at `start_ticks`.

    The pidfd is opened first and the identity checked after: if the check
    passes, the pidfd refers to that very process however the pid is reused later.
    """
    opened = open_pidfd(pid)
    if opened is None:
        return None
    fd, stat = opened
    if stat.start_ticks != start_ticks:
        os.close(fd)
        return None
    return fd


def open_pidfd(pid: int) -> tuple[int, ProcStat] | None:
    """A pidfd on `pid` and the stat of the process it refers to; None if there is no such process.

    The stat is read after the pidfd is opened, so it describes that process
    (zombies included) unless the pid was reused in between, which a caller
    detects by comparing the start ticks with the ones it expects.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    stat = read_stat(pid)
    if stat is None:
        os.close(fd)
        return None
    return fd, stat


def exited(fds: list[int]) -> set[int]:
    """The pidfds among `fds` whose process has exited (one poll, no waiting)."""
    if not fds:
        return set()
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(0)}


def pidfd_exit_status(pidfd: int) -> int | None:
    """The exact wait status of an exited process, from the kernel (Linux >= 6.15).

    None while the process lives or is an unreaped zombie, or when the kernel
    does not know PIDFD_GET_INFO. Works for processes that are not our children.
    """
    buf = bytearray(_PIDFD_INFO_SIZE)
    struct.pack_into("=Q", buf, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ESRCH, errno.EOPNOTSUPP):
            return None
        raise
    (mask,) = struct.unpack_from("=Q", buf, 0)
    if not mask & _PIDFD_INFO_EXIT:
        return None
    (status,) = struct.unpack_from("=i", buf, _PIDFD_INFO_EXIT_CODE_OFFSET)
    return status


@functools.cache
def pidfd_info_supported() -> bool:
    """Whether this kernel keeps exit statuses for pidfd holders (PIDFD_GET_INFO, Linux >= 6.15)."""
    buf = bytearray(_PIDFD_INFO_SIZE)
    fd = os.pidfd_open(os.getpid())
    try:
        fcntl.ioctl(fd, PIDFD_GET_INFO, buf, True)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def group_exists(pgid: int) -> bool:
    """True while the process group has any member, zombies included (one syscall)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def group_alive(pgid: int) -> bool:
    """True while the process group has a member that is not a zombie.

    Zombies are ignored: an orphan's zombie may wait long for a parent that reaps.
    This reads /proc/*/stat, so callers try group_exists first.
    """
    if not group_exists(pgid):
        return False
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None and stat.pgid == pgid and not stat.zombie:
                return True
    return False
