"""Which files of the logs directory are clawfleet's own, and removing them safely.

The logs directory may be shared (``logging.dir=/var/log``, or a directory an operator also
writes to), so retention (``logs.remove_expired``) and the Sentinel's pruning
(``beat_schedules/sentinel_checks.py``) must recognise clawfleet's files and nothing else.
A name alone cannot tell: ``<node name>.log.<n>`` is also ``auth.log.1``, and node names are
free (``w1@host``, ``$CLAW_NODE_NAME``), so a rule on role prefixes would miss ours and a
loose one would take theirs. A file is clawfleet's when both hold:

- its name is ``<stem>.log`` or ``<stem>.log.<n>`` (what the rotating handler writes) and the
  entry itself is a regular file: never a symlink, which may point anywhere;
- its first line is a JSON object whose ``process`` is ``<stem>``. Clawfleet's file handler
  writes its node name as ``process`` on every line (``logs._formatter``), and rotation
  renames a file whole, so a rotated file starts with such a line too. Syslog lines,
  compressed files and other programs' text or JSON do not; a file nothing was written to
  yet is left alone (it is empty, so it costs nothing).

It is a content marker rather than a name marker so that the file names stay
``<node name>.log``, and files written before this rule are still recognised.

Everything goes through a descriptor of the directory (``dir_fd``), so nothing outside it is
read or removed even if its path is replaced meanwhile, and a file is checked again (same
inode, still a regular file) just before it is unlinked.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LOG_NAME = re.compile(r"(?P<stem>.+)\.log(?:\.(?P<n>\d+))?")
# Enough for any first line (tracebacks included); a longer one is not recognised, so kept.
FIRST_LINE_MAX = 1024 * 1024


@dataclass(frozen=True)
class OwnLog:
    """One of clawfleet's log files, as it was when found."""

    name: str
    rotated: bool  # <stem>.log.<n>: nobody writes to it any more
    size: int
    mtime: float
    dev: int
    ino: int


def _same_file(a: os.stat_result, dev: int, ino: int) -> bool:
    return stat.S_ISREG(a.st_mode) and (a.st_dev, a.st_ino) == (dev, ino)


class LogsDir:
    """The logs directory, opened once: its own files, and removing one of them.
    Use as a context manager (it holds a descriptor of the directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> LogsDir:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self.fd)

    def own_logs(self) -> list[OwnLog]:
        found = []
        with os.scandir(self.fd) as entries:
            for entry in entries:
                match = LOG_NAME.fullmatch(entry.name)
                if match is None:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # rotated or pruned meanwhile
                    continue
                if stat.S_ISREG(st.st_mode) and self._marked(entry.name, match["stem"], st):
                    found.append(
                        OwnLog(entry.name, match["n"] is not None, st.st_size, st.st_mtime,
                               st.st_dev, st.st_ino)
                    )  # fmt: skip
        return found

    def _marked(self, name: str, stem: str, st: os.stat_result) -> bool:
        """The file's first line is one clawfleet wrote for the process ``stem``."""
        try:
            # O_NOFOLLOW: a symlink swapped in since the stat is not read through.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as file:
            if not _same_file(os.fstat(file.fileno()), st.st_dev, st.st_ino):
                return False
            line = file.readline(FIRST_LINE_MAX)
        try:
            first = json.loads(line)
        except ValueError:  # not JSON, not UTF-8, empty, or cut at FIRST_LINE_MAX
            return False
        return isinstance(first, dict) and first.get("process") == stem

    def remove(self, log: OwnLog) -> bool:
        """Unlink ``log`` if its name still holds that same regular file; whether it did."""
        try:
            now = os.stat(log.name, dir_fd=self.fd, follow_symlinks=False)
            if not _same_file(now, log.dev, log.ino):
                return False
            os.unlink(log.name, dir_fd=self.fd)
        except FileNotFoundError:  # another pruner came first
            return False
        return True
