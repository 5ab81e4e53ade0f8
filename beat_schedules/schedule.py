"""The static beat schedule: what time drives on every fleet."""

from __future__ import annotations

from typing import Any

from claw_worker import constants as k
from claw_worker.config import Config


def beat_schedule(config: Config) -> dict[str, dict[str, Any]]:
    return {
        "session-sweeper": {
            "task": k.TASK_SWEEP,
            "schedule": float(config.worker.sweep_interval_sec),
            "options": {"queue": k.QUEUE_HEALTH, "expires": config.worker.sweep_interval_sec},
        },
    }
