"""The exit keeper: one process that writes down how directly started units ended.

A daemon starts commands directly (no shim per unit) and learns their exit
statuses itself. The keeper is there for the time the daemon is not: the
driver hands it a pidfd for every unit it starts or takes over, and when one
exits the keeper appends "TOKEN wSTATUS" (the exact wait status) to that
start's status file, as a shim would. It runs in its own session, outlives a
killed daemon, and exits once its daemon has gone and every process it
watches has ended. The kernel keeps a reaped process's status for pidfd
holders (PIDFD_GET_INFO); an unreaped zombie's is read from /proc.

    python -m reconciler_drivers._keeper     (fd 0: the keeper's end of a SOCK_SEQPACKET pair)

The driver's side is _keeper_client.py; this module imports little, so the keeper starts fast.
"""

from __future__ import annotations

import os
import select
import socket
import time

from . import _linux

RECORDS_KEPT = 4096  # bytes of records (about 200 starts) a unit's status file may grow to before it starts afresh
RETRY_FIRST, RETRY_MAX = 0.001, 1.0  # seconds between looks at an exit whose status is not out yet
# After taking requests, a pause before looking again: a burst of starts then reaches the keeper in a
# few wake-ups, where waking it for each one cost the daemon more than the message itself.
GATHER_PAUSE = 0.002
MESSAGE_MAX = 8192


def encode_request(token: str, pid: int, start_ticks: int, status_file: str) -> bytes:
    return f"{token} {pid} {start_ticks} {status_file}".encode()


def decode_request(message: bytes) -> tuple[str, int, int, str]:
    token, pid, ticks, path = message.decode().split(" ", 3)
    return token, int(pid), int(ticks), path


def record(status_file: str, token: str, wait_status: int) -> None:
    """Append this start's record: one write, to a file started afresh when it has grown."""
    try:
        if os.stat(status_file).st_size > RECORDS_KEPT:
            os.unlink(status_file)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(status_file), exist_ok=True)
    fd = os.open(status_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{token} w{wait_status}\n".encode())
    finally:
        os.close(fd)


def exit_status(pidfd: int, pid: int, start_ticks: int) -> int | None:
    """The exact wait status of an exited process, once the kernel shows it to us."""
    status = _linux.pidfd_exit_status(pidfd)
    if status is None and _linux.can_read_exit_status():
        stat = _linux.read_stat(pid)
        if stat is not None and stat.start_ticks == start_ticks and stat.zombie:
            status = stat.exit_status
    return status


def _receive_all(channel: socket.socket) -> list[tuple[bytes, int]] | None:
    """Every request waiting in the channel, each with its pidfd; None once the daemon has closed its end."""
    requests = []
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, MESSAGE_MAX, 1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return requests
        if not message:
            return requests or None  # with requests before it, the end is seen again at the next look
        requests += [(message, fd) for fd in fds]


def serve(channel: socket.socket) -> None:
    """Watch until the daemon has closed its end and nothing watched is left."""
    poller = select.epoll()
    poller.register(channel.fileno(), select.EPOLLIN)
    watched: dict[int, tuple[str, int, int, str]] = {}  # pidfd -> (token, pid, start ticks, status file)
    ended: dict[int, float] = {}  # pidfd -> delay before the next look at its status
    connected = True
    while connected or watched:
        timeout = min(ended.values()) if ended else -1
        for fd, _ in poller.poll(timeout):
            if fd != channel.fileno():
                poller.unregister(fd)
                ended[fd] = RETRY_FIRST
                continue
            requests = _receive_all(channel)
            if requests is None:
                poller.unregister(fd)
                connected = False
            for request, pidfd in requests or ():
                watched[pidfd] = decode_request(request)
                poller.register(pidfd, select.EPOLLIN)
            time.sleep(GATHER_PAUSE)
        for fd in list(ended):
            token, pid, ticks, status_file = watched[fd]
            status = exit_status(fd, pid, ticks)
            if status is None:
                ended[fd] = min(ended[fd] * 2, RETRY_MAX)
                continue
            record(status_file, token, status)
            os.close(fd)
            del ended[fd], watched[fd]


if __name__ == "__main__":
    serve(socket.socket(fileno=0))
