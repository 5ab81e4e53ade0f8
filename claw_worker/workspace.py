"""The agent's workspace: the directories and files ``clawctl onboard`` creates from the
templates in ``claw_worker/templates/``, and :func:`create_missing` to put back what is
gone (the Sentinel's repair) without touching anything that exists.

``onboard`` also rewrites the managed block of an existing ``AGENTS.md``, ``SOUL.md`` and
``USER.md`` (``cli/onboard.py``); that is a user's explicit request, never done behind
their back.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from claw_worker.config.store import atomic_write_text

MANAGED_FILES = ("AGENTS.md", "SOUL.md", "USER.md")
# workspace path -> template name: created when missing, never overwritten.
SEED_FILES = {"HEARTBEAT.md": "HEARTBEAT.md", "memory/MEMORY.md": "MEMORY.md"}
WORKSPACE_DIRS = ("memory", "skills")
# What a working workspace must hold (HEARTBEAT.md and memory/MEMORY.md are the user's to
# delete: the agent reads them if they exist).
REQUIRED_DIRS = WORKSPACE_DIRS
REQUIRED_FILES = MANAGED_FILES


def make_workspace(workspace: Path) -> None:
    """Create the workspace if missing, private (0700): exec can leave set-id files in it
    (docs/security.md, threat model), so other local users must not reach them."""
    workspace.mkdir(mode=0o700, parents=True, exist_ok=True)


def template(name: str) -> str:
    return (resources.files("claw_worker") / "templates" / name).read_text(encoding="utf-8")


def missing_entries(workspace: Path) -> list[str]:
    """The required directories (``memory/``) and files (``AGENTS.md``) not in
    ``workspace``, by their names relative to it; everything when it does not exist."""
    missing = [f"{name}/" for name in REQUIRED_DIRS if not (workspace / name).is_dir()]
    missing += [name for name in REQUIRED_FILES if not (workspace / name).is_file()]
    return missing


def create_missing(workspace: Path) -> list[str]:
    """Create the workspace, its required directories and its required files (fresh from
    their templates, as onboard creates them) where they are missing; returns the names
    created. An existing file is never rewritten; a path taken by something else (a file
    where a directory belongs) is an ``OSError``."""
    created: list[str] = []
    if not workspace.is_dir():
        make_workspace(workspace)
    for name in REQUIRED_DIRS:
        path = workspace / name
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)  # a file in its place: OSError
            created.append(f"{name}/")
    for name in REQUIRED_FILES:
        path = workspace / name
        if not path.exists():
            atomic_write_text(path, template(name), mode=0o644)
            created.append(name)
    return created
