"""Config: the strict model tree, the file store and the paths under $CLAW_HOME."""

from claw_worker.config.paths import claw_home, config_path, logs_dir, workspace_dir
from claw_worker.config.schema import Config
from claw_worker.config.store import ConfigError, load_config

__all__ = [
    "Config",
    "ConfigError",
    "claw_home",
    "config_path",
    "current_config",
    "load_config",
    "logs_dir",
    "workspace_dir",
]


def current_config() -> Config:
    """The config of this process, from --config / $CLAW_CONFIG / $CLAW_HOME/config.json."""
    return load_config(config_path())
