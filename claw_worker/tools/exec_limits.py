"""Resource limits for the processes of one ``exec`` call, sandbox or not.

The reaper (``_reaper.py``) sets them with ``setrlimit`` in the command's process just
before it runs (never in the worker or the reaper): CPU seconds (SIGXCPU, then SIGKILL a
second later), memory (RLIMIT_DATA: heap and private writable mappings, so a JVM's
reserved but unused ranges do not count), file size (SIGXFSZ kills a writer past it) and no core files.

Processes at once is the hard one. ``RLIMIT_NPROC`` counts every process and thread of the
real uid, the worker's own included, so it is set to ``max_processes`` above what the uid
runs already; the kernel ignores it for root. As root, each call therefore gets its own
pids cgroup (cgroup v1's ``pids`` hierarchy, where it is mounted and writable) with
``pids.max = max_processes``: a fork bomb then fails to fork, and the deadline ends it.
Where neither holds (root without a writable pids cgroup), ``process_limit_holds`` says so
and one warning is logged per process.

The disk is guarded, not limited: RLIMIT_FSIZE bounds one file, not how many; so
``DiskGuard`` keeps a command from starting, and stops it, while the filesystem holding the
workspace has less than ``tools.exec.min_free_disk_mb`` free (Redis's append-only file and
the logs usually share that disk).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

from claw_worker.config.schema import ExecToolConfig

log = logging.getLogger(__name__)

PIDS_V1_ROOT = Path("/sys/fs/cgroup/pids")
CGROUP_PREFIX = "claw-exec-"
_RMDIR_WAIT_SEC = 2.0
MB = 1024 * 1024


class ExecLimits(BaseModel):
    """What the reaper applies; ``as_argument`` is how it travels on the command line."""

    cpu_sec: int
    memory_bytes: int
    nproc: int
    file_bytes: int

    def as_argument(self) -> str:
        return f"{self.cpu_sec},{self.memory_bytes},{self.nproc},{self.file_bytes}"


def limits_for(cfg: ExecToolConfig) -> ExecLimits:
    nproc = cfg.max_processes + (0 if os.getuid() == 0 else _tasks_of_uid(os.getuid()))
    return ExecLimits(
        cpu_sec=cfg.cpu_sec,
        memory_bytes=cfg.memory_mb * MB,
        nproc=nproc,
        file_bytes=cfg.max_file_mb * MB,
    )


NO_PROCESS_LIMIT = "none: root without a writable cgroup v1 pids hierarchy"


def process_limit() -> str:
    """How ``max_processes`` is enforced here: "RLIMIT_NPROC" (not root), "pids cgroup"
    (root with one), else NO_PROCESS_LIMIT."""
    if os.getuid() != 0:
        return "RLIMIT_NPROC"
    return "pids cgroup" if _pids_parent() is not None else NO_PROCESS_LIMIT


def process_limit_holds() -> bool:
    """Whether ``max_processes`` is enforced here: not root, or root with a pids cgroup."""
    return process_limit() != NO_PROCESS_LIMIT


@contextlib.contextmanager
def pids_cgroup(token: str, max_processes: int) -> Iterator[Path | None]:
    """As root, a fresh pids cgroup capped at ``max_processes`` for one call (its
    ``cgroup.procs`` file, which the reaper's child joins), removed afterwards; else None."""
    parent = _pids_parent() if os.getuid() == 0 else None
    if parent is None:
        if os.getuid() == 0:
            _warn_no_process_limit()
        yield None
        return
    group = parent / f"{CGROUP_PREFIX}{token}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(max_processes))
    except OSError as exc:
        log.warning("exec: could not make a pids cgroup at %s (%s); no process limit", group, exc)
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:
        yield group / "cgroup.procs"
    finally:
        _remove(group)


@lru_cache(maxsize=1)
def _pids_parent() -> Path | None:
    """The worker's own cgroup in the v1 pids hierarchy, if we may make groups in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            parent = PIDS_V1_ROOT / path.lstrip("/")
            if (parent / "cgroup.procs").exists() and os.access(parent, os.W_OK):
                return parent
    return None


@lru_cache(maxsize=1)
def _warn_no_process_limit() -> None:
    log.warning(
        "exec: running as root without a writable pids cgroup (%s), so "
        "tools.exec.max_processes cannot be enforced (the kernel ignores RLIMIT_NPROC for "
        "root); run the worker as a normal user or give it a pids cgroup",
        PIDS_V1_ROOT,
    )


def _remove(group: Path) -> None:
    """rmdir the group once its last process is gone (the reaper has killed them all)."""
    deadline = time.monotonic() + _RMDIR_WAIT_SEC
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                log.warning("exec: could not remove the pids cgroup %s: %s", group, exc)
                return
            time.sleep(0.02)


def _tasks_of_uid(uid: int) -> int:
    """Processes and threads whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{name}/status").read_text().splitlines()
            values = dict(line.split(":", 1) for line in fields if ":" in line)
            if int(values["Uid"].split()[0]) == uid:
                count += int(values["Threads"])
    return count


class DiskGuard:
    """Free space on the filesystem holding ``path``, read (statvfs) at most every
    ``CHECK_SEC``: ``low()`` is called on every step of following a command."""

    CHECK_SEC = 0.25

    def __init__(self, path: Path, min_free_mb: int) -> None:
        self.path = path
        self.min_free_mb = min_free_mb
        self.free_mb: int | None = None
        self._next_check = 0.0

    def low(self) -> bool:
        if not self.min_free_mb:
            return False
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.CHECK_SEC
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        self.free_mb = st.f_bavail * st.f_frsize // MB
        return self.free_mb < self.min_free_mb

    def describe(self) -> str:
        return (f"the disk holding the workspace has {self.free_mb} MB free, below "
                f"tools.exec.min_free_disk_mb ({self.min_free_mb} MB)")  # fmt: skip
