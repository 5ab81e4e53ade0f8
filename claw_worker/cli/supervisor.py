"""``clawctl gateway run``: a foreground supervisor of the local fleet, as systemd would be.

Starts the embedded Redis (when ``redis.url`` is empty), the ingress, one worker and beat
(and Flower on request), each in its own process group with output in the logs directory;
restarts a child that dies, with exponential backoff, and stops the fleet with the child's
last output when one keeps dying right after it starts; on SIGINT/SIGTERM stops them all —
ingress first so nothing new arrives, Redis last — and leaves no process behind (a second
signal kills them at once). It owns the embedded Redis it started: restarts it when it dies
and, on exit, stops whichever server then serves CLAW_HOME's socket, even one another
process started meanwhile. One ``gateway run`` per CLAW_HOME (a lock in its run directory).
A taken port, an unusable directory or an unreachable Redis is reported before anything
starts.
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
from claw_worker.cli import _run_lock
from claw_worker.cli._common import unusable_home
from claw_worker.cli._listeners import clawfleet_listener
from claw_worker.config import Config, ConfigError
from claw_worker.config.local import check_local, dir_problem
from claw_worker.config.paths import claw_home, logs_dir, run_dir
from claw_worker.embedded_redis import (
    EmbeddedRedis,
    ensure_embedded,
    is_alive,
    serving_pid,
    shutdown_serving,
    socket_problem,
)
from claw_worker.process import ENV_NODE_NAME, hide_from_same_user
from claw_worker.redis_conn import redis_url

STOP_TIMEOUT_SEC = 15.0
QUIET_STOP_SEC = 1.0  # children still running after this: say what the stop waits for
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
        # 0600 like the *.log files: the output holds message previews.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "ab") as log:
            self.log_offset = log.seek(0, os.SEEK_END)
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

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    config: Config
    with_flower: bool = False
    flower_port: int = 5555
    echo: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    owns_redis: bool = False  # it started the embedded Redis: it keeps it up and stops it
    _stop: threading.Event = field(default_factory=threading.Event)
    _force: threading.Event = field(default_factory=threading.Event)
    _lock: object = None  # the open lock file of _run_lock, while this fleet runs

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
        directory it cannot create (the log directory and workspace named by their field),
        another ``gateway run`` on this CLAW_HOME, a configured Redis that does not answer, a
        port already taken."""
        self._check_dirs()
        self._lock = _run_lock.hold()
        if self._lock is None:
            pid = _run_lock.holder() or 0
            raise SupervisorError(
                f"another `clawctl gateway run` (pid {pid or 'unknown'}) is already running on "
                f"this CLAW_HOME ({claw_home()}); {_run_lock.how_to_stop(pid)}, or use that one"
            )
        if not self.config.redis.url and socket_problem():
            raise SupervisorError(socket_problem())
        if self.config.redis.url and not is_alive(self.config.redis.url):
            raise SupervisorError(
                f"Redis at redis.url is not reachable: {_safe_url(self.config.redis.url)}"
            )
        gateway = self.config.gateway
        exposure = gateway.exposure_problem()
        if exposure:  # the ingress would refuse to start, and be restarted in a loop
            raise SupervisorError(exposure)
        ports = [(gateway.host, gateway.port, "gateway.port", "clawctl config set gateway.port N")]
        if os.environ.get("CLAW_GATEWAY_PORT"):  # the port came from there
            ports = [(gateway.host, gateway.port, "CLAW_GATEWAY_PORT", "CLAW_GATEWAY_PORT=N")]
        if self.with_flower:
            ports.append(("127.0.0.1", self.flower_port, "--flower-port", "--flower-port N"))
        for host, port, name, fix in ports:
            problem = port_problem(host, port)
            if problem:
                raise SupervisorError(f"{name}: {problem} or use `{fix}`")

    def _check_dirs(self) -> None:
        """CLAW_HOME, then the config's log directory and workspace (named by their field),
        tried without leaving anything behind; then the run and log directories made."""
        problem = dir_problem(claw_home())
        if problem:
            raise SupervisorError(unusable_home(claw_home(), problem))
        try:
            check_local(self.config)
        except ConfigError as exc:
            raise SupervisorError(str(exc)) from None
        for path in (run_dir(), logs_dir(self.config)):
            try:
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:  # found makeable a moment ago: raced, or a full disk
                raise SupervisorError(f"cannot create {path}: {exc.strerror or exc}") from None

    def start(self) -> None:
        if self.config.redis.url:
            self.echo(f"redis     {_safe_url(self.config.redis.url)} (configured)")
        else:
            self.redis = ensure_embedded(daemonize=False)
            self.owns_redis = self.redis.process is not None
            owner = "started" if self.owns_redis else "already running"
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
            self._watch_redis()
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

    def _watch_redis(self) -> None:
        """The embedded Redis this supervisor started is up: restarted when it died (or
        taken over when another process restarted it first, so it is still stopped here)."""
        if not self.owns_redis or self.redis is None:
            return
        proc = self.redis.process
        if proc is not None and proc.poll() is None:
            return
        if proc is None and is_alive(self.redis.url):
            return
        if proc is not None:
            self.echo(f"redis exited with {proc.returncode}; restarting")
        self.redis = ensure_embedded(daemonize=False)
        if self.redis.process is not None:
            self.echo(f"{'redis':<9} pid {self.redis.process.pid:<7} restarted")
        else:
            self.echo(f"{'redis':<9} pid {serving_pid() or '?':<7} restarted by another "
                      "process; stopped with the fleet")  # fmt: skip

    def request_stop(self, *_: object) -> None:
        if self._stop.is_set():
            self._force.set()  # a second Ctrl-C: do not wait for anything
        self._stop.set()

    def started(self) -> bool:
        return self.redis is not None or any(c.process for c in self.children)

    def stop(self) -> None:
        """Stop children in order (ingress first, Redis last); kill what does not stop in
        time, or everything at once on a second signal (a message in flight is not lost:
        the mailbox runs it again)."""
        ingress, rest = self.children[:1], self.children[1:]
        for group in (ingress, rest):
            for child in group:
                child.signal(signal.SIGTERM)
            self._wait(group)
        if self._force.is_set():
            self.echo("forced: killed what was still running")
        if self.redis is not None and self.owns_redis:
            shutdown_serving()  # the one serving CLAW_HOME now, whoever started it
            if self.redis.process is not None:
                self.redis.process.poll()  # reaped, if it was our child
        if self._lock is not None:
            self._lock.close()  # type: ignore[attr-defined]

    def _wait(self, group: list[Child]) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_SEC
        told = False
        while any(c.running() for c in group) and not self._force.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not told and STOP_TIMEOUT_SEC - left >= QUIET_STOP_SEC:
                names = ", ".join(c.name for c in group if c.running())
                self.echo(f"waiting up to {left:.0f} s for {names} to stop (runs in progress "
                          "finish first); Ctrl-C again to force")  # fmt: skip
                told = True
            self._force.wait(0.05)
        for child in group:
            if child.running():
                child.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(5)  # type: ignore[union-attr]


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
                if exc.errno != errno.EADDRINUSE:
                    return f"cannot listen on {host}:{port} ({exc.strerror});"
                ours = clawfleet_listener(port)
                if ours:
                    return (f"port {port} on {host} is already in use by {ours}: stop that "
                            "fleet (Ctrl-C in its `clawctl gateway run`, or `clawctl gateway "
                            "stop`)")  # fmt: skip
                return f"port {port} on {host} is already in use by another program: stop it"
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
    hide_from_same_user()  # it holds the environment every fleet process is given
    sup = Supervisor(config, with_flower=with_flower, flower_port=flower_port, echo=echo)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    try:
        sup.preflight()  # nothing started yet: an error here leaves nothing to stop
        sup.start()
        echo("fleet running; Ctrl-C stops it")
        sup.run_forever()
    finally:
        if sup.started():
            echo("stopping the fleet ...")
        sup.stop()
        if sup.started():
            echo("stopped")
    return 0


__all__ = ["Supervisor", "SupervisorError", "redis_url", "run"]
