"""Where clawfleet keeps its files: $CLAW_HOME (default ~/.claw) and what lives under it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from claw_worker.config.schema import Config

ENV_HOME = "CLAW_HOME"
ENV_CONFIG = "CLAW_CONFIG"  # set by `clawctl --config` for the processes it starts


def claw_home() -> Path:
    return Path(os.environ.get(ENV_HOME) or "~/.claw").expanduser()


def home_problem() -> str | None:
    """Why $CLAW_HOME cannot be used as the directory it must be (it, or a directory above
    it, is a file), or None. A missing one is fine: ``clawctl onboard`` creates it."""
    home = claw_home()
    name = "CLAW_HOME" if os.environ.get(ENV_HOME) else "The default CLAW_HOME"
    for path in (home, *home.parents):
        try:
            is_dir = stat.S_ISDIR(path.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # e.g. a directory above it may not be searched: let commands say
            return None
        if is_dir:
            return None
        where = "which is a file" if path == home else f"but {path} is a file"
        return (
            f"{name} is {home}, {where}, not a directory. Set CLAW_HOME to a directory "
            "(it holds config.json, the workspace, logs and the embedded Redis's files)."
        )
    return None


def config_path(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]).expanduser()
    return claw_home() / "config.json"


def run_dir() -> Path:
    return claw_home() / "run"


def data_dir() -> Path:
    return claw_home() / "data"


def cache_dir() -> Path:
    """Per-host derived data (the memory search index), rebuilt from the workspace at will.

    Must be on local disk, not on a shared filesystem like the workspace may be: SQLite's
    WAL does not work over NFS, and each host keeps its own copy anyway.
    """
    return claw_home() / "cache"


def logs_dir(config: Config) -> Path:
    return Path(config.logging.dir).expanduser() if config.logging.dir else claw_home() / "logs"


def workspace_dir(config: Config) -> Path:
    ws = config.agents.defaults.workspace
    return Path(ws).expanduser() if ws else claw_home() / "workspace"
