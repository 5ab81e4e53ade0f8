"""Cron jobs firing: beat re-arms a job's entry as it sends it, a worker puts the job's
message into the job's session, and the run's outcome is recorded (with back-off and, after
too many failures in a row, the job disabled and an alert sent).

The path of one fire: RedBeat finds the entry ``cron:<id>`` due and reserves it; beat calls
:func:`rearm` (the entry now holds the next due time) and sends ``claw.cron.fire(id,
due=<the due time fired>)``; :func:`fire` submits an ``InboundMessage`` whose id is made
of the job id and that due time, into the session ``cron:<id>``; the worker runs it like any
message (the reply goes to the job's ``--deliver`` chat, else nowhere) and then calls
:func:`record_result`. A second fire of the same due time (two beats for a moment around a
failover, a task delivered twice) makes the same message id, which the mailbox drops.
"""

from __future__ import annotations

import math
import time

import redis
import structlog

from beat_schedules.cron_jobs import Change, Job, change_job, load
from beat_schedules.cron_schedule import format_time
from claw_worker import constants as k
from claw_worker import metrics
from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus, Origin, OutboundMessage
from claw_worker.session.submit import submit

log = structlog.get_logger(__name__)

PENDING = ("queued", "running")
MAX_ERROR_CHARS = 500


def rearm(client: redis.Redis, job_id: str, fired_due: int | None) -> int | None:
    """Beat, as it sends a job's fire (its one-shot entry is spent): arm the job's next due
    time after the one fired and after now; a missing or disabled job loses its entry.
    Returns the time armed, or None."""
    now = time.time()

    def decide(job: Job | None, armed: int | None) -> Change:
        if job is None or not job.enabled:
            return Change(disarm=True)
        if armed is not None and armed > (fired_due or now):
            return Change()  # already armed for a later time (a retry, or rearmed twice)
        following = job.schedule.next_after(max(now, fired_due or 0))
        return Change(arm=following) if following is not None else Change(disarm=True)

    change = change_job(client, job_id, decide)
    return change.arm if change else None


def fire(client: redis.Redis, config: Config, job_id: str, due: int | None = None) -> str:
    """The job's time came: put its message into its session (once per due time)."""
    now = time.time()
    due = int(due) if due is not None else int(now)
    job = load(client, job_id)
    if job is None or not job.enabled:
        rearm(client, job_id, due)  # removes a stale entry
        metrics.CRON_FIRES.labels("disabled").inc()
        return f"cron {job_id}: {'no such job' if job is None else 'disabled'}, not fired"
    rearm(client, job_id, due)  # beat did it already; this covers a beat that did not
    bound = log.bind(job_id=job.id, job_name=job.name, due=format_time(due))
    if not config.cron.enabled:
        _count_skip(client, job.id)
        bound.info("cron job skipped: cron.enabled is false")
        metrics.CRON_FIRES.labels("skipped").inc()
        return f"cron {job.id}: skipped (cron.enabled is false)"
    if _run_pending(client, job):
        _count_skip(client, job.id)
        bound.warning("cron job skipped: its previous run is not over",
                      message_id=job.run_message_id)  # fmt: skip
        metrics.CRON_FIRES.labels("skipped").inc()
        return f"cron {job.id}: skipped, the previous run ({job.run_message_id}) is not over"
    metadata: dict[str, object] = {"origin": Origin.CRON.value, "job_id": job.id, "due": due}
    if job.deliver is not None:
        metadata["deliver"] = {"channel": job.deliver.channel, "chat_id": job.deliver.chat_id}
    message = InboundMessage(
        message_id=f"cron-{job.id}-{due}",
        channel="cron",
        chat_id=job.id,
        sender_id="cron",
        session_key=job.session_key,
        text=f"[cron job {job.name!r} ({job.id}), due {format_time(due, job.schedule.tz)}]\n"
        f"{job.message}",
        metadata=metadata,
    )

    def record(current: Job | None, _armed: int | None) -> Change | None:
        if current is None or current.last_due_at == due:
            return None  # removed meanwhile, or this due time is recorded already
        return Change(job=current.model_copy(update={
            "last_run_at": now, "last_due_at": due, "last_status": "fired",
            "run_message_id": message.message_id,
        }))  # fmt: skip

    # Recorded first: a run can be over before submit returns (its result then lands last).
    change_job(client, job.id, record)
    if not submit(client, config, message).stored:
        bound.info("cron job fire repeated: dropped", message_id=message.message_id)
        metrics.CRON_FIRES.labels("duplicate").inc()
        return f"cron {job.id}: due {due} was fired already (duplicate dropped)"
    bound.info("cron job fired", message_id=message.message_id, late_sec=round(now - due, 3))
    metrics.CRON_FIRES.labels("fired").inc()
    return f"cron {job.id} ({job.name}) fired for {format_time(due)}"


def _run_pending(client: redis.Redis, job: Job) -> bool:
    if not job.run_message_id or job.last_status != "fired":
        return False
    status = client.hget(k.message_key(job.session_key, job.run_message_id), "status")
    return status in PENDING


def _count_skip(client: redis.Redis, job_id: str) -> None:
    def decide(job: Job | None, _armed: int | None) -> Change | None:
        return Change(job=job.model_copy(update={"skipped": job.skipped + 1})) if job else None

    change_job(client, job_id, decide)


def record_result(
    client: redis.Redis,
    config: Config,
    message: InboundMessage,
    status: MessageStatus,
    error: str,
) -> None:
    """A job's run is over: its last status; a failure is retried after a back-off, and
    after ``max_consecutive_failure_retries`` failed retries the job is disabled with an
    alert."""
    job_id = str(message.metadata.get("job_id") or "")
    if not job_id:
        return
    cron = config.cron
    now = time.time()
    error = " ".join(error.split())[:MAX_ERROR_CHARS]

    def decide(job: Job | None, _armed: int | None) -> Change | None:
        if job is None:
            return None
        if status is MessageStatus.DONE:
            return Change(job=job.model_copy(update={
                "last_status": "done", "last_error": "", "consecutive_failures": 0,
                "retry_at": None, "run_message_id": "",
            }))  # fmt: skip
        if status is not MessageStatus.FAILED:  # cancelled with /stop: not the job's fault
            return Change(job=job.model_copy(update={"last_status": str(status),
                                                     "run_message_id": ""}))  # fmt: skip
        failures = job.consecutive_failures + 1
        failed = {"last_status": "failed", "last_error": error or "failed",
                  "consecutive_failures": failures, "run_message_id": ""}  # fmt: skip
        if failures > cron.max_consecutive_failure_retries:
            return Change(job=job.model_copy(update={**failed, "enabled": False,
                                                     "retry_at": None}), disarm=True)  # fmt: skip
        if not job.enabled:
            return Change(job=job.model_copy(update=failed))
        delay = min(cron.retry_backoff_base_sec * 2 ** (failures - 1), cron.retry_backoff_max_sec)
        retry = math.ceil(now + delay)
        return Change(job=job.model_copy(update={**failed, "retry_at": retry}), arm=retry)

    change = change_job(client, job_id, decide)
    if change is None or change.job is None:
        return
    job = change.job
    bound = log.bind(job_id=job.id, job_name=job.name, status=str(status))
    if change.disarm and status is MessageStatus.FAILED:
        bound.error("cron job disabled after repeated failures",
                    failures=job.consecutive_failures, error=error)  # fmt: skip
        _alert(client, config, job, message.message_id)
    elif change.arm is not None:
        bound.warning("cron job failed, retry scheduled", failures=job.consecutive_failures,
                      retry_at=format_time(change.arm), error=error)  # fmt: skip
    else:
        bound.info("cron job run recorded")


def _alert(client: redis.Redis, config: Config, job: Job, message_id: str) -> None:
    """Tell someone a job was disabled: its delivery chat, else Sentinel's alert chat."""
    text = (
        f"Cron job {job.name!r} ({job.id}) was disabled: its last "
        f"{job.consecutive_failures} runs failed. Last error: {job.last_error}. "
        f"Re-enable it with `clawctl cron enable {job.id}`."
    )
    if job.deliver is not None:
        channel, chat_id = job.deliver.channel, job.deliver.chat_id
    else:
        channel, chat_id = config.sentinel.notify_channel, config.sentinel.notify_chat_id
    if not channel or not chat_id:
        log.warning("cron alert has no chat to go to (no --deliver, no sentinel.notify_channel)",
                    job_id=job.id, text=text)  # fmt: skip
        return
    out = OutboundMessage(
        message_id=f"{message_id}.alert",
        channel=channel,
        chat_id=chat_id,
        session_key=job.session_key,
        text=text,
        metadata={"kind": "alert", "origin": Origin.CRON.value},
    )
    client.xadd(k.OUTBOUND_STREAM, {"data": out.model_dump_json()},
                maxlen=k.OUTBOUND_MAXLEN, approximate=True)  # fmt: skip
    log.warning("cron alert sent", job_id=job.id, channel=channel, chat_id=chat_id)
