"""File access the worker can trust: atomic writes, and workspace files opened so that
what the agent put there cannot lead elsewhere.

Atomic writes: readers (other processes, other hosts on a shared volume) see the old file
or the new one, never half of it (a temp file in the same directory, fsync, rename).

The agent controls the workspace: its ``exec`` can turn any file into a symlink to the
worker's config (API keys), a FIFO that blocks its reader forever, or ``/dev/zero``. So
every read or write of a workspace file by worker code (the file tools, the bootstrap
files of the system prompt, memory, ``HEARTBEAT.md``, the nodes' media and audit) goes
through here with ``within`` set to the workspace:

- the path is resolved and checked against ``within``, then opened with no symlink
  followed on the way (each directory opened ``O_NOFOLLOW`` relative to the one before),
  so a link swapped in between the check and the open makes the open fail instead of
  leading out (no check-then-use race);
- reads open non-blocking, take regular files only, and read at most a given size;
- writes create the missing directories and the file the same way, and replace the file
  atomically (temp file and rename, both relative to the directory's descriptor).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator
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


log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutsideWorkspace(OSError):
    """The path resolves outside the directory it must stay in."""


def confined(path: Path, within: Path | None) -> Path:
    """``path`` resolved (symlinks followed, as of now); OutsideWorkspace if ``within`` (an
    already resolved directory) is given and the path leads out of it."""
    resolved = Path(os.path.realpath(path))
    if within is not None and not resolved.is_relative_to(within):
        raise OutsideWorkspace(f"{path} leads outside {within}")
    return resolved


@contextlib.contextmanager
def _directory(path: Path, *, create: bool = False) -> Iterator[int]:
    """A descriptor of the absolute directory ``path``, reached from ``/`` without following
    any symlink (ELOOP or ENOTDIR if one is on the way); with ``create``, missing
    directories are made (0777 less the umask, as ``mkdir`` does)."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in path.parts[1:]:
            try:
                step = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by another
                    os.mkdir(name, 0o777, dir_fd=fd)
                step = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int, within: Path | None) -> tuple[bytes, int] | None:
    """The first ``limit`` bytes of ``path`` and its size, or None: missing, not a regular
    file (a FIFO, a device, a directory), unreadable, or leading outside ``within``."""
    try:
        real = confined(path, within)
        with _directory(real.parent) as parent:
            fd = os.open(real.name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)  # fmt: skip
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        try:
            return fh.read(limit), info.st_size
        except OSError:
            return None


def read_text(path: Path, limit: int, within: Path | None) -> str | None:
    """``read_regular`` as text (UTF-8, undecodable bytes replaced), or None."""
    found = read_regular(path, limit, within)
    return None if found is None else found[0].decode("utf-8", errors="replace")


def read_workspace_text(workspace: Path, name: str, limit: int) -> str | None:
    """The text of the workspace file ``name`` (its first ``limit`` bytes), or None when it
    is missing, or is not a regular file inside the workspace: that is logged, as someone
    (the agent's ``exec``, say) put a link, a FIFO or a device where the file belongs."""
    path = workspace / name
    text = read_text(path, limit, Path(os.path.realpath(workspace)))
    if text is None and os.path.lexists(path):
        log.warning("workspace file %s ignored: not a regular file inside the workspace", name)
    return text


def _target(path: Path, within: Path | None) -> Path:
    """Where a write to ``path`` lands: its directory resolved and checked (the file itself
    is never followed: a symlink there is replaced, not written through)."""
    return confined(path.parent, within) / path.name


def write_atomic(path: Path, data: bytes, within: Path | None, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (readers see the old file or the new one),
    its directories created as needed; OutsideWorkspace if it would land outside
    ``within``. The new file keeps the old one's mode, else gets what the umask allows."""
    target = _target(path, within)
    with _directory(target.parent, create=True) as parent:
        if mode is None:
            try:
                mode = os.stat(target.name, dir_fd=parent, follow_symlinks=False).st_mode & 0o777
            except FileNotFoundError:
                mode = 0o666 & ~current_umask()
        tmp = f".{target.name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), mode)
                os.fsync(fh.fileno())
            os.replace(tmp, target.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise


def open_append(path: Path, within: Path | None, mode: int = 0o600) -> int:
    """A descriptor to append to ``path`` (created if missing, directories too), which must
    be a regular file inside ``within``; the caller closes it."""
    target = _target(path, within)
    with _directory(target.parent, create=True) as parent:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(target.name, flags | os.O_CLOEXEC, mode, dir_fd=parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutsideWorkspace(f"{path} is not a regular file")
    return fd


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """``write_atomic`` anywhere (the CLI's own files: config, units, ...): the new file gets
    ``mode``, else the old file's mode, else what the umask allows; the temp file is created
    0600 and only then given that mode (never wider in between)."""
    write_atomic(path, data, None, mode)
