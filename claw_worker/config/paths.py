"""Where clawfleet keeps its files: $CLAW_HOME (default ~/.claw) and what lives under it."""

from __future__ import annotations

import os
from pathlib import Path

from claw_worker.config.schema import Config

ENV_HOME = "CLAW_HOME"
ENV_CONFIG = "CLAW_CONFIG"  # set by `clawctl --config` for the processes it starts


def claw_home() -> Path:
    return Path(os.environ.get(ENV_HOME) or "~/.claw").expanduser()


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
