"""The memory files: where each layer lives, and appending to one safely.

Layers (all under ``<workspace>/memory/``): ``profile.md`` (who the user is),
``project.md`` (ongoing work), ``procedures.md`` (how things are done) and dated notes
``notes/YYYY-MM-DD.md``. ``MEMORY.md`` is the human-facing index that lists them.

Appends are read-modify-write of a whole file (so readers on other hosts never see half a
note, via atomic rename), serialised by an ``fcntl`` lock so two writers on one host never
lose each other's note.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Literal

from claw_worker.fsutil import open_append, read_regular, write_atomic

Layer = Literal["profile", "project", "procedures", "note"]
LAYERS: dict[str, str] = {
    "profile": "profile.md",
    "project": "project.md",
    "procedures": "procedures.md",
}
TITLES = {"profile": "Profile", "project": "Projects", "procedures": "Procedures"}
INDEX_FILE = "MEMORY.md"
NOTES_DIR = "notes"
LOCK_FILE = ".lock"
MAX_LAYER_BYTES = 8 * 1024 * 1024  # one layer file; appends to a larger one are refused
# C0 controls but tab and newline, DEL and C1 controls: none belongs in a note (a NUL makes
# the file "binary" to grep, an escape sequence would come back into every prompt).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def memory_dir(workspace: Path) -> Path:
    return workspace / "memory"


def layer_path(workspace: Path, layer: str, *, now: float | None = None) -> Path:
    """The file a layer writes to; for ``note``, today's dated file."""
    if layer == "note":
        day = time.strftime("%Y-%m-%d", time.localtime(now))
        return memory_dir(workspace) / NOTES_DIR / f"{day}.md"
    try:
        return memory_dir(workspace) / LAYERS[layer]
    except KeyError:
        raise ValueError(f"unknown memory layer {layer!r}") from None


def _within(workspace: Path) -> Path:
    """The workspace resolved: memory files are read and written only inside it (the
    agent's exec could make ``memory/`` or a layer a link to the worker's config)."""
    return Path(os.path.realpath(workspace))


@contextmanager
def _locked(workspace: Path) -> Iterator[None]:
    fd = open_append(memory_dir(workspace) / LOCK_FILE, _within(workspace))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def ensure_index(workspace: Path) -> None:
    """Write MEMORY.md (the layer list) if the workspace has none yet."""
    path = memory_dir(workspace) / INDEX_FILE
    if not os.path.lexists(path):
        # The same text `clawctl onboard` seeds, so both paths give one layout.
        text = (resources.files("claw_worker") / "templates" / INDEX_FILE).read_bytes()
        write_atomic(path, text, _within(workspace))


def append(workspace: Path, layer: str, text: str, *, now: float | None = None) -> Path:
    """Append ``text`` under a timestamp heading to a layer; returns the file written.

    Each entry gets its own ``##`` heading so the index makes it a chunk of its own: a
    search then ranks single notes rather than whole days.
    """
    text = plain(text).strip()
    if not text:
        raise ValueError("memory text is empty")
    path = layer_path(workspace, layer, now=now)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    with _locked(workspace):
        ensure_index(workspace)
        old = _read_layer(path, workspace)
        if old is None:
            title = f"Notes {path.stem}" if layer == "note" else TITLES[layer]
            old = f"# {title}\n".encode()
        # Bytes, not text: a file edited by hand in another encoding (Latin-1, say) keeps
        # its bytes; decoding and re-encoding it replaced each of them with U+FFFD for good.
        new = old.rstrip(b"\n") + f"\n\n## {stamp}\n\n{text}\n".encode()
        write_atomic(path, new, _within(workspace))
    return path


def plain(text: str) -> str:
    """``text`` as a note keeps it: line breaks as ``\\n``, other control characters spaces."""
    return _CONTROLS.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))


def _read_layer(path: Path, workspace: Path) -> bytes | None:
    """A layer file's bytes; None when it does not exist yet. Anything else in its place (a
    link leading out of the workspace, a FIFO) or a file too large to rewrite whole is an
    error: appending would replace it."""
    if not os.path.lexists(path):
        return None
    found = read_regular(path, MAX_LAYER_BYTES + 1, _within(workspace))
    rel = path.relative_to(workspace).as_posix()
    if found is None:
        raise ValueError(f"{rel} is not a regular file inside the workspace; not appended")
    if found[1] > MAX_LAYER_BYTES:
        raise ValueError(f"{rel} is larger than {MAX_LAYER_BYTES // 2**20} MiB; not appended")
    return found[0]
