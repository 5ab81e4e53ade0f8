"""Celery tasks: thin, stably named wrappers around plain functions.

``shared_task``: importing this module does not build the app; the app in ``celery.py``
names this module in its ``include`` list and the tasks bind to it.
"""

from __future__ import annotations

import redis
from celery import shared_task

from claw_worker import constants as k
from claw_worker.runtime import get_runtime
from claw_worker.session.runner import drain_session
from claw_worker.session.sweeper import sweep_dirty_sessions

# Redis may restart under us; a drain that cannot reach it is retried (and the sweeper
# re-sends drains for anything left behind).
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


@shared_task(
    name=k.TASK_DRAIN,
    ignore_result=True,
    autoretry_for=_REDIS_DOWN,
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=20,
)
def drain(session_key: str) -> int:
    if not isinstance(session_key, str) or not session_key:
        raise ValueError("drain needs a non-empty session_key")
    runtime = get_runtime()
    # Before taking the lease: a message stored from now on pushes a drain of its own, so
    # none waits behind a drain that has already looked at the mailbox.
    runtime.mailbox.drain_started(session_key)
    return drain_session(runtime.drain_context(), session_key)


@shared_task(name=k.TASK_SWEEP, ignore_result=True, autoretry_for=_REDIS_DOWN, max_retries=3)
def sweep() -> int:
    rt = get_runtime()
    return sweep_dirty_sessions(
        rt.mailbox, rt.send_drain, grace_sec=rt.config.worker.sweep_interval_sec
    )


@shared_task(name=k.TASK_PING)
def ping() -> str:
    return "pong"


# -- time-driven work: the logic lives in beat_schedules/ --------------------------------------


@shared_task(name=k.TASK_CRON_FIRE, ignore_result=True, autoretry_for=_REDIS_DOWN, max_retries=5)
def cron_fire(job_id: str, due: int | None = None) -> str:
    from beat_schedules.cron import fire

    rt = get_runtime()
    return fire(rt.redis, rt.config, job_id, due)


@shared_task(name=k.TASK_HEARTBEAT, ignore_result=True, autoretry_for=_REDIS_DOWN, max_retries=3)
def heartbeat() -> str:
    from beat_schedules.heartbeat import tick

    rt = get_runtime()
    return tick(rt.redis, rt.config)


@shared_task(name=k.TASK_SENTINEL, ignore_result=True, autoretry_for=_REDIS_DOWN, max_retries=3)
def sentinel() -> str:
    from beat_schedules.sentinel import check

    rt = get_runtime()
    return check(rt.redis, rt.config)


@shared_task(name=k.TASK_AUTONOMY, ignore_result=True, autoretry_for=_REDIS_DOWN, max_retries=3)
def autonomy() -> str:
    from beat_schedules.autonomy import tick

    rt = get_runtime()
    return tick(rt.redis, rt.config)


@shared_task(name=k.TASK_SELFCHECK, ignore_result=True, autoretry_for=_REDIS_DOWN, max_retries=5)
def selfcheck() -> str:
    from beat_schedules.selfcheck import run

    rt = get_runtime()
    return run(rt.redis, rt.config)


@shared_task(name=k.TASK_RUNS_CLEANUP, ignore_result=True, autoretry_for=_REDIS_DOWN)
def runs_cleanup() -> int:
    from claw_worker.session.runs import forget_expired

    return forget_expired(get_runtime().redis)


@shared_task(name=k.TASK_WORK_RECONCILE, ignore_result=True, autoretry_for=_REDIS_DOWN)
def work_reconcile() -> str:
    from claw_worker.work.pipelines import reconcile_active
    from claw_worker.work.spawn import reconcile_spawned

    rt = get_runtime()
    return f"{reconcile_active(rt.redis, rt.config)} {reconcile_spawned(rt.redis, rt.config)}"
