"""The observer process: reports every exec of `sleep <TAG…>` and the exit of those processes.

Usage: observer_proc.py TAG [--poll]

It runs apart from the harness so that reading /proc for every exec on the
machine never competes with the in-process raw spawner for the GIL.

Protocol on stdout, one line per record:
  M connector|poll <resolution_ns>    first line: the mode it runs in
  E <pid> <t_ns> <arg>                 `sleep <arg>` exec'd at t_ns
  X <pid> <t_ns>                       that process exited at t_ns
  L                                    the kernel dropped events (receive buffer overrun)
Times are CLOCK_MONOTONIC nanoseconds, the clock of time.monotonic_ns().

Connector mode (Linux proc connector, needs root): t_ns is the kernel's own
timestamp of the exec/exit event, taken at the end of execve / in do_exit; the
observer's lag does not enter any figure. Poll mode: a loop over /proc with no
more than 1 ms between scans; t_ns is when a scan saw the change (an upper
bound, late by at most one scan and pause: the resolution in the M line, taken
from the first scan, so it grows with the number of processes).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import sys
import time

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
SO_RCVBUFFORCE = 33
NLMSG_HDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
EVENT_PIDS = struct.Struct("=ii")  # process_pid, process_tgid (exec and exit alike)
EVENT_OFFSET = NLMSG_HDR.size + CN_MSG.size
POLL_PAUSE_NS = 1_000_000


def matching_arg(pid: int, tag: bytes) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if len(argv) == 3 and argv[1].startswith(tag) and os.path.basename(argv[0]) == b"sleep":
        return argv[1]
    return None


def open_connector() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.bind((0, CN_IDX_PROC))
    payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), 3, 0, 0, 0) + cn)  # NLMSG_DONE
    return sock


def run_connector(sock: socket.socket, tag: bytes, out: int) -> None:
    os.write(out, b"M connector 1\n")
    tracked: set[int] = set()
    while True:
        lines = []
        try:
            data = sock.recv(65536)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            os.write(out, b"L\n")
            continue
        while data:
            what, _cpu, t_ns = EVENT_HEAD.unpack_from(data, EVENT_OFFSET)
            pid, tgid = EVENT_PIDS.unpack_from(data, EVENT_OFFSET + EVENT_HEAD.size)
            if what == PROC_EVENT_EXEC:
                arg = matching_arg(tgid, tag)
                if arg is not None:
                    tracked.add(tgid)
                    lines.append(b"E %d %d %s\n" % (tgid, t_ns, arg))
            elif what == PROC_EVENT_EXIT and pid == tgid and tgid in tracked:
                tracked.discard(tgid)
                lines.append(b"X %d %d\n" % (tgid, t_ns))
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = b""
        if lines:
            os.write(out, b"".join(lines))


def run_poll(tag: bytes, out: int) -> None:
    """Fallback: scan /proc every millisecond, reading cmdline only of pids not seen before."""
    seen: set[int] = set()
    tracked: dict[int, bytes] = {}
    for scan in itertools.count():
        start = time.monotonic_ns()
        now_pids = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit()}
        lines = []
        for pid in now_pids - seen:
            arg = matching_arg(pid, tag)
            if arg is not None:
                tracked[pid] = arg
                lines.append(b"E %d %d %s\n" % (pid, time.monotonic_ns(), arg))
        for pid in [p for p in tracked if p not in now_pids]:
            del tracked[pid]
            lines.append(b"X %d %d\n" % (pid, time.monotonic_ns()))
        seen = now_pids
        if scan == 0:
            # Resolution: one scan plus the pause between scans.
            os.write(out, b"M poll %d\n" % (time.monotonic_ns() - start + POLL_PAUSE_NS))
        if lines:
            os.write(out, b"".join(lines))
        time.sleep(POLL_PAUSE_NS / 1e9)


def main() -> None:
    tag = sys.argv[1].encode()
    out = sys.stdout.fileno()
    if "--poll" not in sys.argv:
        try:
            sock = open_connector()
        except OSError:
            sock = None
        if sock is not None:
            run_connector(sock, tag, out)
            return
    run_poll(tag, out)


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
