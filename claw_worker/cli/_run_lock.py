"""The lock a running ``clawctl gateway run`` holds on its CLAW_HOME: one fleet per home, and
how other commands (a second ``gateway run``, ``uninstall --purge``) find it and its pid.

A ``flock`` on ``run/gateway-run.lock``: the kernel releases it when the process ends, so a
crashed supervisor never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from claw_worker.config.paths import run_dir

LOCK_NAME = "gateway-run.lock"


def lock_path() -> Path:
    return run_dir() / LOCK_NAME


def hold() -> IO[str] | None:
    """Take the lock for this process (held while the returned file stays open), or None
    when another process holds it."""
    run_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    fh = open(lock_path(), "a+")  # noqa: SIM115 - kept open: that is the lock
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.truncate(0)
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def holder() -> int | None:
    """The pid of the ``gateway run`` holding the lock (0: it has not written it yet), or
    None when no ``gateway run`` runs on this CLAW_HOME."""
    try:
        fh = open(lock_path())  # noqa: SIM115
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(fh.read().strip() or 0)
            except ValueError:
                return 0
        return None


def how_to_stop(pid: int) -> str:
    """How to stop the ``gateway run`` with ``pid``, for a message."""
    if not pid:
        return "stop it with Ctrl-C in its terminal"
    return f"stop it with Ctrl-C in its terminal, or `kill -INT {pid}`"
