"""What the worker does once a pipeline task's or a sub-agent's message is finished
(``beat_schedules/outcomes.py`` calls ``record_work`` for both origins).

A pipeline task's run completes its task (``pipelines.task_finished``: dependents start, the
chat is told at the end); a message in a sub-agent's session frees its slot and is reported
to its parent session (``spawn.child_finished``). The reply text is the result; for a failed
run, the error.
"""

from __future__ import annotations

import redis
import structlog

from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage, MessageStatus, Origin
from claw_worker.work.model import PipelineError
from claw_worker.work.pipelines import task_finished
from claw_worker.work.spawn import child_finished

log = structlog.get_logger(__name__)


def result_text(status: MessageStatus, text: str, error: str) -> str:
    if status is MessageStatus.DONE:
        return text
    if status is MessageStatus.CANCELLED:
        return "stopped with /stop before it finished"
    return error or text or "failed"


def record_work(
    client: redis.Redis,
    config: Config,
    message: InboundMessage,
    status: MessageStatus,
    text: str,
    error: str,
) -> None:
    result = result_text(status, text, error)
    meta = message.metadata
    if message.origin is Origin.PIPELINE:
        pipeline_id, task_id = str(meta.get("pipeline_id") or ""), str(meta.get("task_id") or "")
        if not pipeline_id or not task_id:
            log.warning("pipeline message without its task", message_id=message.message_id)
            return
        try:
            task_finished(client, config, pipeline_id, task_id, int(meta.get("attempt") or 0),
                          ok=status is MessageStatus.DONE, text=result,
                          message_id=message.message_id)  # fmt: skip
        except PipelineError as exc:  # expired, or removed, while the run went on
            log.warning("pipeline task result not recorded", pipeline_id=pipeline_id,
                        task_id=task_id, error=str(exc))  # fmt: skip
    elif message.origin is Origin.SPAWN:
        child_finished(client, config, message.session_key, message.message_id, status, result)
