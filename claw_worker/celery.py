"""The Celery app: ``celery -A claw_worker worker|beat|flower`` finds it here.

Importing this module has no side effects beyond reading the config file: the embedded
Redis (when ``redis.url`` is empty) is started by the worker and beat at start-up, and by
the ingress and the supervisor, never on import, so ``clawctl status`` stays read-only.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from claw_worker import constants as k
from claw_worker.config import Config, ConfigError, current_config
from claw_worker.redis_conn import kombu_url, redis_url

# A run renews its session lease, so correctness never rests on the visibility timeout;
# it only bounds how late Redis redelivers a task whose worker vanished. Keep it above
# the longest drain (a batch of agent runs).
VISIBILITY_TIMEOUT_SEC = 4 * 3600

TASK_MODULES = ["claw_worker.tasks"]


def celery_settings(config: Config) -> dict[str, Any]:
    from beat_schedules.schedule import beat_schedule

    broker = kombu_url(redis_url(config))
    return {
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
        "task_default_queue": k.QUEUE_SESSIONS,
        "task_routes": {
            k.TASK_DRAIN: {"queue": k.QUEUE_SESSIONS},
            k.TASK_SWEEP: {"queue": k.QUEUE_HEALTH},
            k.TASK_PING: {"queue": k.QUEUE_HEALTH},
        },
        "beat_schedule": beat_schedule(config),
        "timezone": "UTC",
    }


def create_app(config: Config | None = None) -> Celery:
    if config is None:
        try:
            config = current_config()
        except ConfigError as exc:
            # Celery would print a traceback; say what is wrong and stop.
            raise SystemExit(f"clawfleet: {exc}") from None
    celery_app = Celery("claw_worker", include=TASK_MODULES)
    celery_app.conf.update(celery_settings(config))
    return celery_app


app = create_app()


def _start_embedded_redis(**_: Any) -> None:
    """Worker and beat start the embedded Redis when no URL is configured."""
    config = current_config()
    if not config.redis.url:
        redis_url(config, start_embedded=True)


def _setup_logging(**_: Any) -> None:
    """Celery's processes log through clawfleet's structlog setup (JSON file + console).

    Each process gets its own file: the role (worker/beat/flower) and the node name.
    """
    import sys

    from claw_worker.logs import setup_logging

    argv = sys.argv
    role = next((r for r in ("beat", "flower", "worker") if r in argv), "celery")
    node = ""
    for flag in ("-n", "--hostname"):
        if flag in argv[:-1]:
            node = "-" + argv[argv.index(flag) + 1].split("@")[0]
    setup_logging(current_config(), f"{role}{node}")


signals.setup_logging.connect(_setup_logging, weak=False)
signals.worker_init.connect(_start_embedded_redis, weak=False)
signals.beat_init.connect(_start_embedded_redis, weak=False)
