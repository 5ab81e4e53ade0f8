"""Finding the running fleet from outside it: the Redis it is on, the config file it runs on.

The config file names a Redis, but a running fleet stays on the one it started with until it
restarts: after ``config set redis.url ...`` the two differ; and a fleet given
``CLAW_REDIS_URL`` by compose or a systemd unit runs on a Redis neither the file nor
clawctl's shell names. So the fleet is looked for on the Redis the config names, then on
those it named before a change, then on the one this home's fleet processes recorded
(``$CLAW_HOME/run/redis-url``), then on this home's embedded Redis if that is running; the
first with live processes is the fleet's.
"""

from __future__ import annotations

import socket
from pathlib import Path

import redis

from claw_worker.config import apply_env_overrides
from claw_worker.config.schema import Config
from claw_worker.control import live_processes
from claw_worker.embedded_redis import embedded_url
from claw_worker.redis_conn import client, recorded_url, redis_url

CONNECT_TIMEOUT_SEC = 1.0
READ_TIMEOUT_SEC = 10.0  # above the 1 s BLPOP slices of a reload


def connect(url: str) -> redis.Redis | None:
    """A client of ``url`` if it answers a PING, else None. Never starts the embedded Redis."""
    conn = client(url, socket_timeout=READ_TIMEOUT_SEC,
                  socket_connect_timeout=CONNECT_TIMEOUT_SEC, health_check_interval=0)  # fmt: skip
    try:
        conn.ping()
    except (redis.RedisError, OSError):
        conn.close()
        return None
    return conn


def find_fleet(
    config: Config, *before: Config, tried: tuple[str, ...] = ()
) -> tuple[str, redis.Redis] | None:
    """The URL and a client of the Redis the running fleet is on (see the module's text);
    with no live process anywhere, the first Redis that answers; None if none does. URLs in
    ``tried`` (the caller found them down) are not asked again."""
    found: list[tuple[str, redis.Redis]] = []
    for url in fleet_urls(config, *before):
        if url in tried:
            continue
        conn = connect(url)
        if conn is None:
            continue
        try:
            if live_processes(conn):
                found.insert(0, (url, conn))
                break
        except (redis.RedisError, OSError):
            pass
        found.append((url, conn))
    for _, conn in found[1:]:
        conn.close()
    return found[0] if found else None


def fleet_urls(config: Config, *before: Config) -> list[str]:
    """Where the fleet is looked for, in order (see the module's text)."""
    urls = [redis_url(apply_env_overrides(c)) for c in (config, *before)]
    return list(dict.fromkeys([*urls, recorded_url() or urls[0], embedded_url()]))


def other_config_files(conn: redis.Redis, path: Path) -> list[str]:
    """The config files the fleet's processes on this host run on, when none of them is
    ``path``; empty when one is, or when none runs on this host (``clawctl`` on a machine
    of its own reaches the fleet through its Redis)."""
    here = socket.gethostname()
    files = {
        str(record.get("config"))
        for record in live_processes(conn)
        if record.get("host") == here and record.get("config")
    }
    if any(Path(name).resolve() == path.resolve() for name in files):
        return []
    return sorted(files)
