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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Literal

from claw_worker.fsutil import atomic_write_bytes

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


@contextmanager
def _locked(workspace: Path) -> Iterator[None]:
    root = memory_dir(workspace)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_index(workspace: Path) -> None:
    """Write MEMORY.md (the layer list) if the workspace has none yet."""
    path = memory_dir(workspace) / INDEX_FILE
    if not path.exists():
        # The same text `clawctl onboard` seeds, so both paths give one layout.
        text = (resources.files("claw_worker") / "templates" / INDEX_FILE).read_bytes()
        atomic_write_bytes(path, text)


def append(workspace: Path, layer: str, text: str, *, now: float | None = None) -> Path:
    """Append ``text`` under a timestamp heading to a layer; returns the file written.

    Each entry gets its own ``##`` heading so the index makes it a chunk of its own: a
    search then ranks single notes rather than whole days.
    """
    text = text.strip()
    if not text:
        raise ValueError("memory text is empty")
    path = layer_path(workspace, layer, now=now)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    with _locked(workspace):
        ensure_index(workspace)
        try:
            old = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            title = f"Notes {path.stem}" if layer == "note" else TITLES[layer]
            old = f"# {title}\n"
        new = old.rstrip("\n") + f"\n\n## {stamp}\n\n{text}\n"
        atomic_write_bytes(path, new.encode("utf-8"))
    return path
