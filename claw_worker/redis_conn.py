"""Redis URLs and clients for every process, from ``redis.url`` or the embedded server."""

from __future__ import annotations

import redis

from claw_worker.config.schema import Config
from claw_worker.embedded_redis import embedded_url, ensure_embedded


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
