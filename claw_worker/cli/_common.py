"""Helpers every ``clawctl`` command shares: loading the config and turning errors into messages."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import redis

from claw_worker.config import (
    Config,
    ConfigError,
    apply_env_overrides,
    config_path,
    load_config,
)
from claw_worker.config.store import MASK
from claw_worker.embedded_redis import EmbeddedRedisError

# Errors a command may hit at run time that are the user's or the machine's, not a bug:
# the CLI boundary prints them as one clear message instead of a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    EmbeddedRedisError,
    redis.RedisError,
    OSError,
)


class CliError(click.ClickException):
    """A failure to report as ``Error: <message>`` with exit status 1."""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return f"{exc}\nFix the file (see `clawctl config check`) or set values with `clawctl config set`."
    if isinstance(exc, EmbeddedRedisError):
        return f"{exc}\nSet redis.url to a running Redis with `clawctl config set redis.url redis://HOST:6379/0`."
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {exc}\nCheck that Redis is running and redis.url is right (`clawctl status`)."
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


def current_path() -> Path:
    """The config file in use: --config / $CLAW_CONFIG / $CLAW_HOME/config.json."""
    return config_path()


def load(*, environment: bool = True) -> Config:
    """The config this command runs with (the file, then the environment overrides such as
    ``CLAW_REDIS_URL``; ``environment=False``: the file alone, as ``config get`` shows it),
    or a clean error exit naming the file and what is wrong in it."""
    path = current_path()
    try:
        config = load_config(path)
        return apply_env_overrides(config) if environment else config
    except ConfigError as exc:
        raise CliError(describe_error(exc)) from None


def mask_url(url: str) -> str:
    """``url`` with any password replaced, for display."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":" + MASK
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))
