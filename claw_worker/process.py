"""Who this process is in the fleet: its role, node name, host and pid.

The node name names the process everywhere: its log file (``<name>.log``), its entry in the
fleet's process registry (config reload), the ``worker`` field of the runs it handles, and,
for a worker, its Celery node in Flower. Processes are replicated (several workers per host,
a standby beat, ingress replicas), so the default name is unique per host and process,
``<role>-<pid>@<host>``. A worker's ``-n`` or ``$CLAW_NODE_NAME`` (which ``clawctl gateway
run`` sets, so the one-box fleet has stable file names) choose another.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from dataclasses import dataclass

ROLES = ("worker", "beat", "flower", "ingress", "cli")


@dataclass(frozen=True)
class ProcessIdentity:
    role: str
    name: str  # the node name: worker-1234@host-a, w1@host-a, beat@host-a ...
    host: str
    pid: int

    @property
    def key(self) -> str:
        """Unique in the fleet even when two processes were given the same name."""
        return f"{self.name}/{self.pid}"

    @property
    def log_name(self) -> str:
        return self.name.replace("/", "_")


ENV_NODE_NAME = "CLAW_NODE_NAME"


def default_name(role: str) -> str:
    return os.environ.get(ENV_NODE_NAME) or f"{role}-{os.getpid()}@{socket.gethostname()}"


_current: ProcessIdentity | None = None


PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def hide_from_same_user() -> bool:
    """Make this process not dumpable: its ``/proc/<pid>/environ``, ``mem`` and ``fd`` become
    root's, so another process of the same user cannot read the secrets it holds (the API
    key, the gateway token, the Redis password in its environment or memory) nor attach to
    it. It matters where ``exec`` runs without bubblewrap (not installed; a container, where
    it cannot make namespaces): the command runs as the fleet's user and, before, read the
    worker's key from ``/proc/$PPID/environ``. Inherited by forked children (a prefork
    pool), reset by ``execve`` (the commands run stay dumpable). No core dumps, and a
    debugger needs root. Linux only; elsewhere a no-op (False)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)  # this process's own symbols: libc's prctl
    return bool(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)


def set_identity(role: str, name: str | None = None) -> ProcessIdentity:
    """Name this process (once, at start-up); ``name`` defaults to :func:`default_name`.
    A fleet process (not clawctl) is hidden from its user's other processes."""
    global _current
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}")
    if role != "cli":
        hide_from_same_user()
    _current = ProcessIdentity(role, name or default_name(role), socket.gethostname(), os.getpid())
    return _current


def identity() -> ProcessIdentity:
    """This process's identity; a process that never named itself is a ``cli`` process.

    A child forked by a prefork pool keeps its parent's role and node name (Celery's view)
    under its own pid.
    """
    global _current
    if _current is None:
        return set_identity("cli")
    if _current.pid != os.getpid():
        _current = ProcessIdentity(_current.role, _current.name, _current.host, os.getpid())
    return _current
