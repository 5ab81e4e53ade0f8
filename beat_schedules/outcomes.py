"""What becomes of an internal message once its run is over: each origin is told.

Called by the worker (``Runtime.on_finished``) after a message whose origin is not a user
finished. A cron job records its last status and backs off or is disabled after repeated
failures (``cron.py``); an autonomy round counts toward its limits (``autonomy.py``); a
pipeline task or a sub-agent reports its result (``claw_worker/work/``).
"""

from __future__ import annotations

import redis

from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus, Origin


def record_outcome(
    client: redis.Redis,
    config: Config,
    message: InboundMessage,
    status: MessageStatus,
    text: str,
    error: str,
) -> None:
    origin = message.origin
    if origin is Origin.CRON:
        from beat_schedules.cron import record_result

        record_result(client, config, message, status, error)
    elif origin in (Origin.AUTONOMY, Origin.AUTOLEARN):
        from beat_schedules.autonomy import record_round

        record_round(client, config, message, status, text)
    elif origin in (Origin.PIPELINE, Origin.SPAWN):
        from claw_worker.work.outcomes import record_work

        record_work(client, config, message, status, text, error)
