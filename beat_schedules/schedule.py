"""The static beat schedule: what time drives on every fleet.

RedBeat stores these entries in Redis at beat start and rewrites them on a config reload
(``scheduler.py``); cron jobs are entries too, added at run time (``cron.py``).
"""

from __future__ import annotations

from typing import Any

from claw_worker import constants as k
from claw_worker.config import Config

RUNS_CLEANUP_SEC = 300.0
WORK_RECONCILE_SEC = 60.0


def _every(task: str, seconds: float, queue: str) -> dict[str, Any]:
    # A tick that could not run in its own interval is dropped, not queued up behind others.
    return {"task": task, "schedule": float(seconds),
            "options": {"queue": queue, "expires": max(1.0, float(seconds))}}  # fmt: skip


def beat_schedule(config: Config) -> dict[str, dict[str, Any]]:
    defaults = config.agents.defaults
    entries = {
        "session-sweeper": _every(k.TASK_SWEEP, config.worker.sweep_interval_sec, k.QUEUE_HEALTH),
        "runs-cleanup": _every(k.TASK_RUNS_CLEANUP, RUNS_CLEANUP_SEC, k.QUEUE_HEALTH),
        # Pipeline tasks whose worker died between finishing and reporting are completed
        # from their message record; a task whose message was never stored is resubmitted.
        "work-reconcile": _every(k.TASK_WORK_RECONCILE, WORK_RECONCILE_SEC, k.QUEUE_TOOLS),
        # The tick itself checks whether autonomy is on: switching it on needs no reload.
        "autonomy-tick": _every(
            k.TASK_AUTONOMY, defaults.runtime_control.autonomy_tick_interval_sec, k.QUEUE_CRON
        ),
    }
    if defaults.heartbeat.enabled:
        entries["heartbeat"] = _every(k.TASK_HEARTBEAT, defaults.heartbeat.every_sec, k.QUEUE_CRON)
    if config.sentinel.enabled:
        entries["sentinel"] = _every(k.TASK_SENTINEL, config.sentinel.interval_sec, k.QUEUE_HEALTH)
    return entries
