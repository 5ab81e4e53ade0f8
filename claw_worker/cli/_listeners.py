"""Which local process listens on a TCP port, and whether it is a clawfleet one: how
``gateway run`` tells a port held by another fleet from one held by another program.

Reads /proc (Linux): the sockets of this network namespace, the processes this user may
inspect (all of them as root). Where that is not possible the answer is simply "unknown"."""

from __future__ import annotations

import os
from pathlib import Path

ROLES = {"claw_ingress": "ingress", "claw-ingress": "ingress", "flower": "Flower"}
LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def listener_pids(port: int) -> list[int]:
    """The processes with a socket listening on ``port`` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            listening = len(fields) > 9 and fields[3] == LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _has_socket(entry.name, inodes):
            pids.append(int(entry.name))
    return pids


def clawfleet_listener(port: int) -> str | None:
    """ "a clawfleet ingress (pid N, CLAW_HOME /x)" when a clawfleet process listens on
    ``port``, else None."""
    for pid in listener_pids(port):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        words = [os.path.basename(word) for word in args.split("\0")]
        role = next((ROLES[w] for w in words if w in ROLES), None)
        if role == "Flower" and "claw_worker" not in words:
            role = None
        if role:
            return f"a clawfleet {role} (pid {pid}, CLAW_HOME {_home_of(pid)})"
    return None


def _has_socket(pid: str, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _home_of(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "unknown"
    for var in environ:
        if var.startswith(b"CLAW_HOME="):
            return var.removeprefix(b"CLAW_HOME=").decode(errors="replace")
    return "~/.claw (the default)"
