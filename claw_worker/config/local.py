"""What a config needs on the host that runs it: the directories it names, usable.

The schema can only say a path is text; whether this host can create and write the log
directory or the workspace is known only by trying. Tried wherever a config is taken, so a
bad path is refused naming its field before anything depends on it: ``clawctl config
check|set``, the start of each process (and of ``gateway run``, ``clawctl agent``), and the
prepare phase of a fleet reload (``reload.py``), where every process checks its own host.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from claw_worker.config.paths import logs_dir, workspace_dir
from claw_worker.config.schema import Config
from claw_worker.config.store import ConfigError

ROLES_WITH_WORKSPACE = ("worker", "cli")  # the agent runs there (the CLI: clawctl agent)


def local_problems(config: Config, role: str = "cli") -> list[str]:
    """``"<field>: <problem>"`` for each directory ``config`` names that a process of
    ``role`` needs and this host cannot create or write ("cli": every one)."""
    needs = []
    if config.logging.enabled:
        needs.append(("logging.dir", "log directory", logs_dir(config)))
    if role in ROLES_WITH_WORKSPACE:
        needs.append(("agents.defaults.workspace", "workspace", workspace_dir(config)))
    found = []
    for field, what, path in needs:
        problem = dir_problem(path)
        if problem:
            verb = "write in" if path.is_dir() else "create"
            found.append(
                f"{field}: cannot {verb} the {what} {path}: {problem}; set {field} to a "
                "directory this host can create and write"
            )
    return found


def check_local(config: Config, role: str = "cli") -> None:
    """A ConfigError naming each of :func:`local_problems`, if any."""
    problems = local_problems(config, role)
    if problems:
        raise ConfigError("\n".join(problems))


def dir_problem(path: Path) -> str:
    """Why ``path`` cannot be (made into) a writable directory, or "" if it can.

    Tried for real, with a directory made and removed at once in ``path`` or in its nearest
    existing parent: permission bits say nothing for root, nor for /proc, a read-only
    mount or a full quota. Leaves nothing behind.
    """
    existing = path.absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".claw-probe-", dir=existing))
    except OSError as exc:
        return f"no directory can be made in {existing} ({exc.strerror or exc})"
    return ""
