"""``python -m claw_worker.health worker|beat``: the health check of a worker or beat
container (compose's ``healthcheck``, a Kubernetes exec probe).

Cheap on purpose: one Redis round trip and no Celery (``celery inspect ping`` builds the
app, broadcasts to the whole fleet and waits out its timeout). Every worker and beat keeps
itself in the fleet's process registry with a heartbeat every few seconds (``control.py``);
the check passes when a process of the role, on this host (a container's hostname), has a
fresh heartbeat and is still running here. That proves the process is up, its control
thread runs and it reaches Redis; it does not prove the worker's consumer takes tasks
(Flower shows that). A standby beat waiting for RedBeat's lock is registered, so healthy.

Exit 0 healthy, 1 unhealthy, 2 when the check cannot run (arguments, config); one line of
output, never the Redis password.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from urllib.parse import urlsplit

ROLES = ("worker", "beat")
REDIS_TIMEOUT_SEC = 3.0


def fleet_redis_url() -> str:
    """The fleet's Redis, as the worker and beat find it: $CLAW_REDIS_URL (compose and the
    Kubernetes manifests set it, so the config file is not even read), else the config's
    ``redis.url``, else the embedded server's socket (never started from here)."""
    url = os.environ.get("CLAW_REDIS_URL")
    if url:
        return url
    from claw_worker.config import current_config
    from claw_worker.redis_conn import redis_url

    return redis_url(current_config())


def where(url: str) -> str:
    """The Redis server named without credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:  # a port that is not a number
        return f"{parts.hostname}"


def running_here(pid: int) -> bool:
    """``pid`` is a live process in this PID namespace (not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists


def check(role: str, url: str, host: str) -> tuple[bool, str]:
    """(healthy, the line to print) for ``role`` on ``host``."""
    import redis

    from claw_worker.control import PROC_TTL_SEC, live_processes

    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT_SEC,
            socket_connect_timeout=REDIS_TIMEOUT_SEC,
        )
    except ValueError as exc:  # redis-py's words for a malformed URL never quote it
        return False, f"unhealthy: the Redis URL cannot be used: {exc}"
    try:
        procs = live_processes(client)
    except redis.RedisError as exc:
        return False, f"unhealthy: Redis at {where(url)} did not answer: {exc}"
    finally:
        client.close()
    mine = sorted(
        {
            str(p.get("name"))
            for p in procs
            if p.get("role") == role
            and p.get("host") == host
            and isinstance(p.get("pid"), int)
            and running_here(p["pid"])
        }
    )
    if not mine:
        return False, (
            f"unhealthy: no {role} process on {host} has a heartbeat in Redis at "
            f"{where(url)} from the last {PROC_TTL_SEC:g} s"
        )
    return True, f"ok: {role} {', '.join(mine)} on {host}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m claw_worker.health",
        description="Exit 0 when this host's worker (or beat) is alive and reaches Redis.",
    )
    parser.add_argument("role", choices=ROLES)
    args = parser.parse_args(argv)  # a bad argument: usage, exit 2
    from claw_worker.config import ConfigError

    try:
        url = fleet_redis_url()
    except ConfigError as exc:
        print("health: " + str(exc).replace("\n", "; "), file=sys.stderr)
        return 2
    healthy, line = check(args.role, url, socket.gethostname())
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
