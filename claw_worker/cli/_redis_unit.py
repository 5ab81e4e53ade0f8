"""The embedded Redis as a systemd service (``clawfleet-redis.service``, written by
``clawctl gateway`` when ``redis.url`` is empty).

``serve`` replaces itself with ``redis-server`` in the foreground, with exactly the
arguments the processes' own :func:`~claw_worker.embedded_redis.ensure_embedded` uses (same
socket, same AOF directory), so systemd supervises it and stops it with SIGTERM (a clean
AOF). ``wait`` (its ``ExecStartPost``) returns once the server answers, so the units
ordered after it start only when Redis is up and never start a second server of their own.

    python -m claw_worker.cli._redis_unit serve|wait
"""

from __future__ import annotations

import os
import sys
import time

from claw_worker.config.paths import data_dir, run_dir
from claw_worker.embedded_redis import embedded_url, find_redis_server, is_alive, server_args

WAIT_SEC = 30.0


def serve() -> None:
    for path in (run_dir(), data_dir()):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    args = server_args(find_redis_server(), daemonize=False)
    os.execv(args[0], args)


def wait(timeout: float = WAIT_SEC) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_alive(embedded_url()):
            return 0
        time.sleep(0.1)
    print(f"the embedded Redis did not answer on {embedded_url()} within {timeout:.0f} s; "
          f"see {run_dir() / 'redis.log'}", file=sys.stderr)  # fmt: skip
    return 1


def main(argv: list[str]) -> int:
    if argv == ["serve"]:
        serve()
    if argv == ["wait"]:
        return wait()
    print("usage: python -m claw_worker.cli._redis_unit serve|wait", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
