"""``clawctl gateway run``: a foreground supervisor of the local fleet, as systemd would be.

Starts the embedded Redis (when ``redis.url`` is empty), the ingress, one worker and beat
(and Flower on request), each in its own process group with output in the logs directory;
restarts a child that dies, with exponential backoff, and stops the fleet with the child's
last output when one keeps dying right after it starts; on SIGINT/SIGTERM stops them all —
ingress first so nothing new arrives, Redis last — and leaves no process behind. A taken
port or an unreachable Redis is reported before anything starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.config.paths import logs_dir, run_dir
from claw_worker.embedded_redis import EmbeddedRedis, ensure_embedded, is_alive
from claw_worker.process import ENV_NODE_NAME
from claw_worker.redis_conn import redis_url

STOP_TIMEOUT_SEC = 15.0
MAX_BACKOFF_SEC = 30.0
STABLE_AFTER_SEC = 30.0  # a child that ran this long has its backoff reset
# A child that dies before STABLE_AFTER_SEC this many restarts in a row cannot start (a
# port taken, a broken config file): the fleet stops and says why instead of looping.
MAX_QUICK_RESTARTS = 3
TAIL_LINES = 8  # lines of a failing child's output shown


class SupervisorError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    where: str  # what it listens on, for the start-up banner
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    log_offset: int = 0  # where this run's output starts in log_path

    def start(self, env: dict[str, str]) -> None:
        # A stable node name (so the log file keeps its name across restarts).
        env = {**env, ENV_NODE_NAME: f"{self.name}@{socket.gethostname()}"}
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            self.process = subprocess.Popen(
                self.args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own signals decide when children stop
            )
        self.started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def last_output(self) -> list[str]:
        """The last lines this run of the child wrote."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                data = log.read()[-8192:]
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]

    def wait(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


@dataclass
class Supervisor:
    config: Config
    with_flower: bool = False
    flower_port: int = 5555
    echo: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def plan(self) -> list[Child]:
        py = sys.executable
        cfg, logs = self.config, logs_dir(self.config)
        queues = ",".join(k.ALL_QUEUES)
        children = [
            Child("ingress", [py, "-m", "claw_ingress"], logs / "ingress.out",
                  f"http://{cfg.gateway.host}:{cfg.gateway.port}"),
            # The plain commands: pool, concurrency and queues come from the config.
            Child("worker", [py, "-m", "celery", "-A", "claw_worker", "worker",
                             "--without-mingle", "--without-gossip"],
                  logs / "worker.out", f"queues {queues}, {cfg.worker.pool} x{cfg.worker.concurrency}"),
            Child("beat", [py, "-m", "celery", "-A", "claw_worker", "beat"],
                  logs / "beat.out", "schedules (RedBeat)"),
        ]  # fmt: skip
        if self.with_flower:
            children.append(
                Child("flower", [py, "-m", "celery", "-A", "claw_worker", "flower",
                                 f"--port={self.flower_port}", "--address=127.0.0.1"],
                      logs / "flower.out", f"http://127.0.0.1:{self.flower_port}")
            )  # fmt: skip
        return children

    def preflight(self) -> None:
        """What would make the fleet fail at once, checked before anything is started: a
        configured Redis that does not answer, a port already taken."""
        if self.config.redis.url and not is_alive(self.config.redis.url):
            raise SupervisorError(
                f"Redis at redis.url is not reachable: {_safe_url(self.config.redis.url)}"
            )
        gateway = self.config.gateway
        exposure = gateway.exposure_problem()
        if exposure:  # the ingress would refuse to start, and be restarted in a loop
            raise SupervisorError(exposure)
        ports = [(gateway.host, gateway.port, "gateway.port", "clawctl config set gateway.port N")]
        if self.with_flower:
            ports.append(("127.0.0.1", self.flower_port, "--flower-port", "--flower-port N"))
        for host, port, name, fix in ports:
            problem = port_problem(host, port)
            if problem:
                raise SupervisorError(f"{name}: {problem}; stop that program or use `{fix}`")

    def start(self) -> None:
        logs_dir(self.config).mkdir(parents=True, exist_ok=True)
        if self.config.redis.url:
            self.echo(f"redis     {_safe_url(self.config.redis.url)} (configured)")
        else:
            self.redis = ensure_embedded(daemonize=False)
            owner = "started" if self.redis.process else "already running"
            self.echo(
                f"redis     {self.redis.url} (embedded, {owner}, AOF in {run_dir().parent / 'data'})"
            )
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.children = self.plan()
        for child in self.children:
            child.start(env)
            self.echo(
                f"{child.name:<9} pid {child.process.pid:<7} {child.where}  log: {child.log_path}"
            )
        self._env = env

    def run_forever(self, poll_interval: float = 0.5) -> None:
        """Watch the children until asked to stop; restart any that dies. A SupervisorError
        when one keeps dying right after it starts (see MAX_QUICK_RESTARTS)."""
        while not self._stop.wait(poll_interval):
            now = time.monotonic()
            for child in self.children:
                proc = child.process
                if proc is None or proc.poll() is None:
                    continue
                if child.next_start == 0.0:
                    ran = now - child.started_at
                    if ran > STABLE_AFTER_SEC:
                        child.restarts = 0
                    elif child.restarts >= MAX_QUICK_RESTARTS:
                        raise SupervisorError(_crash_loop(child, proc.returncode))
                    delay = min(MAX_BACKOFF_SEC, 0.5 * 2**child.restarts)
                    child.next_start = now + delay
                    self.echo(
                        f"{child.name} exited with {proc.returncode}; restarting in {delay:.1f}s"
                    )
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    child.start(self._env)
                    self.echo(f"{child.name:<9} pid {child.process.pid:<7} restarted")

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop children in order (ingress first, Redis last); kill what does not stop."""
        ingress, rest = self.children[:1], self.children[1:]
        for group in (ingress, rest):
            for child in group:
                child.signal(signal.SIGTERM)
            for child in group:
                if not child.wait(STOP_TIMEOUT_SEC):
                    child.signal(signal.SIGKILL)
                    child.wait(5)
        if self.redis is not None:
            self.redis.stop()


def port_problem(host: str, port: int) -> str | None:
    """Why nothing can listen on ``host:port`` (bound as the ingress's server binds it:
    every address the host resolves to, with SO_REUSEADDR), or None."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot resolve the host {host!r} ({exc.strerror})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} on {host} is already in use by another program"
                return f"cannot listen on {host}:{port} ({exc.strerror})"
    return None


def _crash_loop(child: Child, returncode: int) -> str:
    how = f"exit status {returncode}" if returncode >= 0 else f"signal {-returncode}"
    lines = child.last_output() or ["(no output)"]
    return (
        f"{child.name} keeps exiting right after it starts (restarted {child.restarts} times, "
        f"each run shorter than {STABLE_AFTER_SEC:.0f} s; the last ended with {how}), so the "
        f"fleet stops. Last lines of {child.log_path}:\n" + "\n".join(f"  {line}" for line in lines)
    )


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for printing."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://****@{rest.split('@', 1)[1]}"
    return url


def run(
    config: Config,
    *,
    with_flower: bool = False,
    flower_port: int = 5555,
    echo: Callable[[str], None] = print,
) -> int:
    sup = Supervisor(config, with_flower=with_flower, flower_port=flower_port, echo=echo)
    sup.preflight()  # nothing started yet: an error here leaves nothing to stop
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    try:
        sup.start()
        echo("fleet running; Ctrl-C stops it")
        sup.run_forever()
    finally:
        echo("stopping the fleet ...")
        sup.stop()
        echo("stopped")
    return 0


__all__ = ["Supervisor", "SupervisorError", "redis_url", "run"]
