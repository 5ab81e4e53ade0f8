"""Atomic file writes: a temp file in the same directory, fsync, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEFAULT_UMASK = 0o022


def current_umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only be read by setting it, and the umask is process-wide: flipping it
    for a moment in a 200-thread worker lets files and shell children that other threads
    create meanwhile come out world-writable. Linux reports it in /proc/self/status.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return DEFAULT_UMASK


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Readers (other processes, other hosts on a shared volume) see the old file or the new
    one, never half of it; a failure leaves the old file and no temp file behind.

    The new file gets ``mode``, else the old file's mode, else what the umask allows; the
    temp file is created 0600 and only then given that mode (never wider in between).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
