"""Celery's settings for the fleet, made from the clawfleet config, and a send-only app.

Every Celery setting clawfleet relies on is set here, explicitly, so the plain commands
work as typed: ``celery -A claw_worker worker`` consumes every queue the fleet sends to
with the configured pool and concurrency, ``celery -A claw_worker beat`` runs on RedBeat
(schedule and lock in Redis, no local file), ``celery -A claw_worker flower`` sees task
events. The app itself is built in ``claw_worker/celery.py``; the ingress builds a
:func:`sender_app` from this module to send tasks by name without the worker's modules.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.redis_conn import kombu_url, redis_url

# A run renews its session lease, so correctness never rests on the visibility timeout;
# it only bounds how late Redis redelivers a task whose worker vanished. Keep it above
# the longest drain (a batch of agent runs).
VISIBILITY_TIMEOUT_SEC = 4 * 3600

ROUTES = {
    k.TASK_DRAIN: {"queue": k.QUEUE_SESSIONS},
    k.TASK_SWEEP: {"queue": k.QUEUE_HEALTH},
    k.TASK_PING: {"queue": k.QUEUE_HEALTH},
    k.TASK_SENTINEL: {"queue": k.QUEUE_HEALTH},
    k.TASK_RUNS_CLEANUP: {"queue": k.QUEUE_HEALTH},
    k.TASK_CRON_FIRE: {"queue": k.QUEUE_CRON},
    k.TASK_HEARTBEAT: {"queue": k.QUEUE_CRON},
    k.TASK_AUTONOMY: {"queue": k.QUEUE_CRON},
    k.TASK_SELFCHECK: {"queue": k.QUEUE_CRON},
    k.TASK_WORK_RECONCILE: {"queue": k.QUEUE_TOOLS},
}


def celery_settings(config: Config, *, explicit_pool: bool = False) -> dict[str, Any]:
    """The settings of every clawfleet Celery app (worker, beat, Flower, ingress sender).

    ``explicit_pool``: the worker command line names a pool itself, so the config's pool
    must not be set (Celery takes ``worker_pool`` over an explicit ``-P prefork``).
    """
    url = redis_url(config)
    broker = kombu_url(url)
    settings: dict[str, Any] = {
        "broker_url": broker,
        "result_backend": broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_SEC,
            "socket_keepalive": True,
            "health_check_interval": 30,
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "result_expires": 3600,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_consumer": "claw_worker.consumer:Consumer",
        # A worker started without -Q consumes all of these; -Q still narrows it. Declared
        # as Celery declares a missing queue (a direct exchange of the same name).
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in k.ALL_QUEUES],
        "task_default_queue": k.QUEUE_SESSIONS,
        "task_create_missing_queues": True,
        "task_routes": ROUTES,
        "worker_concurrency": config.worker.concurrency,
        "timezone": "UTC",
        # Beat: RedBeat keeps the schedule and the one-active-beat lock in Redis, so beat
        # writes no local file and a standby on another host takes over when it dies.
        "beat_scheduler": "beat_schedules.scheduler:FleetScheduler",
        "beat_max_loop_interval": config.beat.max_loop_interval_sec,
        "redbeat_redis_url": url,
        "redbeat_key_prefix": k.BEAT_KEY_PREFIX,
        "redbeat_lock_key": k.BEAT_LOCK_KEY,
        "redbeat_lock_timeout": config.beat.lock_timeout_sec,
        "redbeat_redis_options": {
            "retry_period": 30,  # ride out a Redis restart instead of crashing beat
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 30,
        },
    }
    if not explicit_pool:
        settings["worker_pool"] = config.worker.pool
    return settings


def sender_app(config: Config) -> Celery:
    """A Celery app that only sends tasks by name (the ingress's): no task modules, no beat
    schedule, nothing of the worker's runtime."""
    app = Celery("claw_ingress", set_as_current=False)
    app.conf.update(celery_settings(config))
    return app
