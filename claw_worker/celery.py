"""The Celery app: ``celery -A claw_worker worker|beat|flower`` finds it here.

This is the one module that builds the app; importing it reads the config file (the
settings are in ``celery_config.py``). Nothing else is started on import: the worker and
beat start the embedded Redis (when ``redis.url`` is empty) and their control listener when
Celery's signals say they start, so ``clawctl status`` stays read-only.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog
from celery import Celery, signals

from beat_schedules.schedule import beat_schedule
from claw_worker.celery_config import celery_settings
from claw_worker.config import Config, ConfigError, current_config
from claw_worker.process import default_name, identity, set_identity

log = structlog.get_logger(__name__)

TASK_MODULES = ["claw_worker.tasks"]
HOSTNAME_FLAGS = ("-n", "--hostname")
POOL_FLAGS = ("-P", "--pool")


def cli_option(argv: list[str], flags: tuple[str, ...]) -> str | None:
    """The value given to one of ``flags`` on the command line (``-n x``, ``-nx``,
    ``--hostname=x``), or None when absent."""
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if not flag.startswith("--") and arg.startswith(flag) and len(arg) > len(flag):
                return arg[len(flag) :]
    return None


def create_app(config: Config | None = None) -> Celery:
    if config is None:
        try:
            config = current_config()
        except ConfigError as exc:
            # Celery would print a traceback; say what is wrong and stop.
            raise SystemExit(f"clawfleet: {exc}") from None
    celery_app = Celery("claw_worker", include=TASK_MODULES)
    explicit_pool = "worker" in sys.argv and cli_option(sys.argv, POOL_FLAGS) is not None
    celery_app.conf.update(celery_settings(config, explicit_pool=explicit_pool))
    celery_app.conf.beat_schedule = beat_schedule(config)
    return celery_app


app = create_app()


def _name_worker(sender: str, instance: Any, **_: Any) -> None:
    """A worker started without ``-n`` is ``worker-<pid>@<host>`` (or ``$CLAW_NODE_NAME``),
    not Celery's ``celery@<host>``: scaled workers on one host must not share a node name or
    a log file."""
    if cli_option(sys.argv, HOSTNAME_FLAGS) is None:
        instance.hostname = default_name("worker")
    set_identity("worker", instance.hostname)


def _setup_logging(**_: Any) -> None:
    """Celery's processes log through clawfleet's structlog setup (JSON file + console),
    each to its own file named by its node name."""
    from claw_worker.config.local import check_local
    from claw_worker.logs import setup_logging

    role = next((r for r in ("beat", "flower", "worker") if r in sys.argv), "worker")
    if identity().role != role:
        set_identity(role)
    config = current_config()
    try:
        check_local(config, role)  # its log directory, a worker's workspace
    except ConfigError as exc:
        raise SystemExit(f"clawfleet: {exc}") from None  # Celery would print a traceback
    setup_logging(config, identity().log_name)


def _start_worker(sender: Any = None, **_: Any) -> None:
    """The worker process: the embedded Redis if no URL is configured, then its /metrics
    server and control listener (registry, /stop, config reload). A prefork pool's children
    run the tasks, so they start their own instead (each its /metrics on a port of its own)."""
    from celery.concurrency.prefork import TaskPool as PreforkPool

    from claw_worker.runtime import start_control, start_metrics

    config = current_config()
    if not config.redis.url:
        from claw_worker.redis_conn import redis_url

        redis_url(config, start_embedded=True)
    _fill_workspace(config)
    pool = getattr(sender, "pool_cls", None)
    if not (isinstance(pool, type) and issubclass(pool, PreforkPool)):
        start_metrics()
        start_control()


def _fill_workspace(config: Config) -> None:
    """The workspace's required files and directories, from their templates where missing
    (never rewritten), as ``clawctl onboard`` makes them: a container's fresh volume, or a
    host no one onboarded, would otherwise start with none, and the Sentinel's first round
    would alert about it."""
    from claw_worker.config.paths import workspace_dir
    from claw_worker.workspace import create_missing

    workspace = workspace_dir(config)
    try:
        created = create_missing(workspace)
    except OSError as exc:  # the Sentinel reports it; the worker still serves
        log.warning("workspace files not created", workspace=str(workspace), error=str(exc))
        return
    if created:
        log.info("workspace files created", workspace=str(workspace), created=created)


def _start_pool_child(**_: Any) -> None:
    from claw_worker.runtime import announce_metrics, start_control, start_metrics

    start_metrics()
    announce_metrics()
    start_control()


def _worker_ready(**_: Any) -> None:
    from claw_worker.runtime import announce_metrics

    announce_metrics()  # a no-op where a prefork pool's children serve /metrics


def _stop_worker(**_: Any) -> None:
    from claw_worker.runtime import stop_control

    stop_control()


signals.celeryd_init.connect(_name_worker, weak=False)
signals.setup_logging.connect(_setup_logging, weak=False)
signals.worker_init.connect(_start_worker, weak=False)
signals.worker_process_init.connect(_start_pool_child, weak=False)
signals.worker_ready.connect(_worker_ready, weak=False)
signals.worker_shutdown.connect(_stop_worker, weak=False)
