"""The per-process runtime of a worker: config snapshot, Redis client, mailbox, agent.

Built once per process (at worker start, or on first use); tasks are thin wrappers that
call into it. The agent runtime is imported lazily, so importing this module stays cheap.

A config reload swaps the snapshot: the next drain gets a context made from the new config
(and a new agent, built on first use), while drains already running finish with the
snapshot they started with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis
import structlog

from claw_worker import constants as k
from claw_worker import metrics
from claw_worker.config import Config, config_path, current_config
from claw_worker.config.reload import LiveConfig, ReloadParticipant
from claw_worker.contract import InboundMessage, Origin
from claw_worker.control import ControlListener, process_listener
from claw_worker.process import identity
from claw_worker.quotas import SenderRuns
from claw_worker.redis_conn import client, record_url, redis_url
from claw_worker.session.leases import LeaseKeeper
from claw_worker.session.mailbox import Mailbox
from claw_worker.session.runner import DrainContext
from claw_worker.session.runs import RunRecorder
from claw_worker.session.stop import CancelListener
from claw_worker.tools.exec_posture import exec_posture
from claw_worker.work.locks import ResourceLocks

if TYPE_CHECKING:  # the agent runtime is imported lazily, on first use
    from claw_worker.agent import Agent, AgentReply

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What a drain needs that follows the config: swapped whole on reload."""

    config: Config
    runs: RunRecorder
    redis: redis.Redis

    @cached_property
    def agent(self) -> Agent:
        from claw_worker.agent import Agent

        return Agent(self.config, self.redis)

    def handle(self, message: InboundMessage, should_stop: Callable[[], bool]) -> AgentReply:
        return self.agent.handle(message, should_stop=should_stop)


class Runtime:
    def __init__(self, config: Config) -> None:
        url = redis_url(config)
        self.redis: redis.Redis = client(url, max_connections=4 * config.worker.concurrency + 64)
        record_url(url)  # for clawctl (config/running.py)
        self.live = LiveConfig(config)
        self._snapshot = self._make_snapshot(config)
        self.mailbox = Mailbox(self.redis, lease_ms=config.worker.lease_sec * 1000)
        self.leases = LeaseKeeper(self.mailbox)
        self.locks = ResourceLocks(self.redis, ttl_ms=config.worker.lease_sec * 1000)
        self.sender_runs = SenderRuns(self.redis)  # quotas.max_runs_per_sender
        self.control: ControlListener = process_listener(
            self.redis, identity(), config=str(config_path().absolute()), metrics=metrics.target(),
            exec=exec_posture(config.tools.exec),
        )  # fmt: skip
        self.cancels = CancelListener(self.redis, self.control)
        ReloadParticipant(
            self.redis,
            identity(),
            config_file=config_path,
            current=lambda: self.live.config,
            apply=self.apply,
        ).attach(self.control)

    @property
    def config(self) -> Config:
        return self.live.config

    def _make_snapshot(self, config: Config) -> Snapshot:
        control = config.agents.defaults.runtime_control
        runs = RunRecorder(
            self.redis,
            ttl_sec=control.run_state_ttl_seconds,
            max_runs=control.run_state_max,
            worker=identity().name,
        )
        return Snapshot(config, runs, self.redis)

    def apply(self, config: Config) -> None:
        """Take a reloaded config: new drains use it (settings named in
        RESTART_PATHS["worker"] keep their start-up values until a restart)."""
        from claw_worker.logs import config_secrets, setup_logging

        old = self.live.config
        # What can fail first, so that a failure leaves the old config in effect whole.
        if old.logging != config.logging or config_secrets(old) != config_secrets(config):
            setup_logging(config, identity().log_name)  # new file, level or secrets to redact
        snapshot = self._make_snapshot(config)
        self.live.swap(config)
        self._snapshot = snapshot
        if old.tools.exec != config.tools.exec:  # shown by clawctl status from the next beat
            self.control.info = {**self.control.info, "exec": exec_posture(config.tools.exec)}

    def send_drain(self, session_key: str, countdown: float = 0.0) -> None:
        from celery import current_app  # this worker's app, without importing its module

        current_app.send_task(
            k.TASK_DRAIN,
            args=[session_key],
            queue=k.QUEUE_SESSIONS,
            countdown=countdown or None,
        )

    def drain_context(self) -> DrainContext:
        snapshot = self._snapshot
        return DrainContext(
            config=snapshot.config,
            mailbox=self.mailbox,
            leases=self.leases,
            handler=snapshot.handle,
            cancels=self.cancels,
            runs=snapshot.runs,
            send_drain=self.send_drain,
            on_finished=self.on_finished,
            locks=self.locks,
            sender_runs=self.sender_runs,
            shutting_down=worker_shutting_down,
        )

    def on_finished(self, message: InboundMessage, status: Any, text: str, error: str) -> None:
        """An internal message (a cron job, an autonomy round) finished: tell its origin."""
        if message.origin is Origin.USER:
            return
        from beat_schedules.outcomes import record_outcome

        record_outcome(self.redis, self.config, message, status, text, error)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime(current_config())
    return _runtime


def start_control() -> None:
    """Join the fleet's control channel now (registry, /stop, reload), not at the first task."""
    get_runtime().control.start()


_metrics_served: tuple[str, int, int | None] | None = None  # (host, first port, port or None)


def start_metrics() -> None:
    """Serve this process's /metrics on worker.metrics_host, at worker.metrics_port or the
    next free port (0: off); before start_control, so the registry record says where."""
    global _metrics_served
    worker = current_config().worker
    if worker.metrics_port:
        port = metrics.serve(worker.metrics_host, worker.metrics_port)
        _metrics_served = (worker.metrics_host, worker.metrics_port, port)


def announce_metrics() -> None:
    """Log where /metrics is served: apart from start_metrics, because a worker's main
    process starts it (worker_init) before Celery sets up its logging."""
    if _metrics_served is None:
        return
    host, first, port = _metrics_served
    if port is None:
        log.warning("no free port for /metrics: not served", host=host, first=first,
                    last=first + metrics.PORT_TRIES - 1)  # fmt: skip
    else:
        log.info("serving /metrics", host=host, port=port)


def stop_control() -> None:
    if _runtime is not None:
        _runtime.control.stop()


def worker_shutting_down() -> bool:
    """Whether this Celery worker is stopping (warm or cold shutdown asked by a signal)."""
    from celery.worker import state

    return state.should_stop is not None or state.should_terminate is not None
