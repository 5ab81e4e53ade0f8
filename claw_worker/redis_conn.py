"""Redis URLs and clients for every process, from ``redis.url`` or the embedded server."""

from __future__ import annotations

from pathlib import Path

import redis

from claw_worker.config.paths import run_dir
from claw_worker.config.schema import Config
from claw_worker.embedded_redis import embedded_url, ensure_embedded
from claw_worker.fsutil import atomic_write_bytes


def redis_url(config: Config, *, start_embedded: bool = False) -> str:
    """The Redis URL in redis-py form (``redis://`` or ``unix://``).

    With ``redis.url`` empty this is the embedded server's socket; ``start_embedded`` starts
    it (daemonized) when it is not running.
    """
    if config.redis.url:
        return config.redis.url
    if start_embedded:
        return ensure_embedded(daemonize=True).url
    return embedded_url()


def kombu_url(url: str) -> str:
    """kombu and Celery spell a unix socket ``redis+socket://``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url


def client(url: str, **kwargs: object) -> redis.Redis:
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(url, **kwargs)  # type: ignore[arg-type]


# KEYS: key   ARGV: token. Deletes the key only while it still holds the token.
_DELETE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def delete_if_ours(client: redis.Redis, key: str, token: str) -> bool:
    """Give back a mark or lock set with ``token`` (SET NX), never one another has taken
    since it expired."""
    return bool(client.eval(_DELETE_IF_OURS, 1, key, token))


def recorded_url_file() -> Path:
    return run_dir() / "redis-url"


def record_url(url: str) -> None:
    """Keep the URL this fleet process runs on in ``$CLAW_HOME/run/redis-url``, for clawctl
    to find the fleet when the config and its own environment name another Redis (the
    fleet's ``CLAW_REDIS_URL`` comes from compose or a systemd unit, not from the shell).
    Mode 0600: the URL may hold a password. Best effort: without it clawctl says where it
    looked."""
    try:
        run_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(recorded_url_file(), url.encode("utf-8"), 0o600)
    except OSError:
        pass


def recorded_url() -> str | None:
    """The URL a fleet process on this home last recorded, if any."""
    try:
        return recorded_url_file().read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
