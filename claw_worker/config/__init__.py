"""Config: the strict model tree, the file store and the paths under $CLAW_HOME."""

import os

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


# Settings a container or a systemd unit may give through the environment (secrets and
# addresses that differ per deployment); they override the file for the running process.
ENV_OVERRIDES = {
    "CLAW_REDIS_URL": ("redis", "url"),
    "CLAW_GATEWAY_HOST": ("gateway", "host"),
    "CLAW_GATEWAY_PORT": ("gateway", "port"),
    "CLAW_GATEWAY_TOKEN": ("gateway", "token"),
}


def apply_env_overrides(config: Config) -> Config:
    data = config.model_dump()
    given = []
    for var, (section, name) in ENV_OVERRIDES.items():
        value: object = os.environ.get(var)
        if not value:
            continue
        if isinstance(data[section][name], int):  # a number in the file: one here too
            try:
                value = int(str(value))
            except ValueError:
                raise ConfigError(f"{var} must be a whole number, not {value!r}") from None
        data[section][name] = value
        given.append(var)
    if not given:
        return config
    from claw_worker.config.store import validate_config_data

    return validate_config_data(data, "environment (" + ", ".join(given) + ")")


def env_overridden() -> dict[str, str]:
    """Dotted path -> the variable of this process's environment that overrides it (set and
    not empty): a change to such a path reaches the file, never this process."""
    return {
        f"{section}.{name}": var
        for var, (section, name) in ENV_OVERRIDES.items()
        if os.environ.get(var)
    }


def current_config() -> Config:
    """The config of this process: --config / $CLAW_CONFIG / $CLAW_HOME/config.json, with
    the environment overrides above applied."""
    return apply_env_overrides(load_config(config_path()))
