"""The per-process runtime of a worker: config snapshot, Redis client, mailbox, agent.

Built once per process on first use (tasks are thin wrappers that call into it). The agent
runtime is imported here, lazily, so importing the Celery app stays cheap for the ingress.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import redis

from claw_worker import constants as k
from claw_worker.cancel import CancelListener
from claw_worker.config import Config, current_config
from claw_worker.contract import InboundMessage
from claw_worker.leases import LeaseKeeper
from claw_worker.mailbox import Mailbox
from claw_worker.redis_conn import client, redis_url
from claw_worker.runs import RunRecorder
from claw_worker.session_runner import DrainContext

if TYPE_CHECKING:  # the agent runtime is imported lazily, on first use
    from claw_worker.agent import AgentReply


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.redis: redis.Redis = client(
            redis_url(config), max_connections=4 * config.worker.concurrency + 64
        )
        self.mailbox = Mailbox(self.redis, lease_ms=config.worker.lease_sec * 1000)
        self.leases = LeaseKeeper(self.mailbox)
        self.cancels = CancelListener(self.redis)
        control = config.agents.defaults.runtime_control
        self.runs = RunRecorder(
            self.redis, ttl_sec=control.run_state_ttl_seconds, max_runs=control.run_state_max
        )

    @cached_property
    def agent(self):
        from claw_worker.agent import Agent

        return Agent(self.config, self.redis)

    def handle(self, message: InboundMessage, should_stop: Callable[[], bool]) -> AgentReply:
        return self.agent.handle(message, should_stop=should_stop)

    def send_drain(self, session_key: str, countdown: float = 0.0) -> None:
        from claw_worker.celery import app

        app.send_task(
            k.TASK_DRAIN,
            args=[session_key],
            queue=k.QUEUE_SESSIONS,
            countdown=countdown or None,
        )

    def drain_context(self) -> DrainContext:
        return DrainContext(
            config=self.config,
            mailbox=self.mailbox,
            leases=self.leases,
            handler=self.handle,
            cancels=self.cancels,
            runs=self.runs,
            send_drain=self.send_drain,
        )


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime(current_config())
    return _runtime
