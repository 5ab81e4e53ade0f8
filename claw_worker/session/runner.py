"""Draining one session's mailbox: the body of the ``claw.session.drain`` task.

lease → take (in-flight first) → run → publish reply once → complete → … → release, and a
new drain when messages are left. Failures are retried with backoff up to
``worker.max_attempts``, then the message is marked failed so the session moves on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus, OutboundMessage
from claw_worker.session.leases import HeldLease, LeaseKeeper
from claw_worker.session.mailbox import LeaseLost, Mailbox
from claw_worker.session.runs import RunRecorder
from claw_worker.session.stop import CancelListener

log = structlog.get_logger(__name__)

MAX_BATCH = 20  # messages per drain before yielding the worker slot to other sessions
MAX_BACKOFF_SEC = 60.0


class HandlerReply(Protocol):
    text: str
    cancelled: bool  # the run ended early because should_stop() turned true


class MessageHandler(Protocol):
    def __call__(
        self, message: InboundMessage, should_stop: Callable[[], bool]
    ) -> HandlerReply: ...


@dataclass
class DrainContext:
    config: Config
    mailbox: Mailbox
    leases: LeaseKeeper
    handler: MessageHandler
    cancels: CancelListener
    runs: RunRecorder
    send_drain: Callable[[str, float], None]  # (session_key, countdown_sec)


def backoff_sec(attempt: int) -> float:
    return min(MAX_BACKOFF_SEC, 2.0**attempt)


def drain_session(ctx: DrainContext, session_key: str) -> int:
    """Process the session's messages in order; returns how many were finished."""
    token = uuid.uuid4().hex
    if not ctx.mailbox.acquire(session_key, token):
        return 0  # the holder drains; its release sends another drain if mail is left
    lease = ctx.leases.hold(session_key, token)
    finished, retry_in = 0, 0.0
    try:
        while finished < MAX_BATCH and not lease.lost.is_set():
            taken = ctx.mailbox.take(session_key, token)
            if taken is None:
                break
            retry_in = _process(ctx, lease, taken.message, taken.recovered)
            if retry_in:
                break
            finished += 1
    except LeaseLost:
        log.warning("lease lost while draining", session_key=session_key)
    finally:
        ctx.leases.drop(lease)
        waiting = ctx.mailbox.release(session_key, token)
        if waiting:
            ctx.send_drain(session_key, retry_in)
    return finished


def _process(
    ctx: DrainContext, lease: HeldLease, message: InboundMessage, recovered: bool
) -> float:
    """Run one message; returns seconds until a retry is due (0 when it was finished)."""
    record, reply_sent = ctx.mailbox.record(message)
    if reply_sent:
        # A previous holder published the reply but died before completing: finish it.
        status = MessageStatus(record.get("final_status") or MessageStatus.DONE.value)
        ctx.mailbox.complete(message, lease.token, status, record.get("reply", ""))
        return 0.0
    not_before = float(record.get("not_before") or 0)
    if not_before > time.time():
        return not_before - time.time()

    attempt = ctx.mailbox.mark_running(message)
    max_attempts = ctx.config.worker.max_attempts
    bound = log.bind(
        session_key=message.session_key,
        message_id=message.message_id,
        channel=message.channel,
        chat_id=message.chat_id,
        attempt=attempt,
    )
    if recovered:
        bound.info("re-running a message left in flight")
    if attempt > max_attempts:
        _finish(ctx, lease, message, MessageStatus.FAILED, "gave up after repeated failures")
        return 0.0

    started = time.monotonic()
    run_id = ctx.runs.start(
        message.session_key, message.message_id, attempt, record.get("run_id") or None
    )
    bound = bound.bind(run_id=run_id)
    run = ctx.cancels.begin(message.session_key)
    stop_requested = ctx.cancels.should_stop(run)

    def should_stop() -> bool:
        return lease.lost.is_set() or stop_requested()

    try:
        reply = ctx.handler(message, should_stop)
    except LeaseLost:
        ctx.runs.finish(run_id, "interrupted", error="session lease lost")
        raise
    except Exception as exc:  # any failure of a run is retried, then reported to the user
        error = f"{type(exc).__name__}: {exc}"[:500]
        ctx.runs.finish(run_id, "failed" if attempt >= max_attempts else "retrying", error=error)
        if attempt >= max_attempts:
            bound.error("message failed", error=error)
            _finish(ctx, lease, message, MessageStatus.FAILED, error)
            return 0.0
        delay = backoff_sec(attempt)
        bound.warning("run failed, will retry", error=error, retry_in=delay)
        ctx.mailbox.defer(message, not_before=time.time() + delay, error=error)
        return delay
    finally:
        ctx.cancels.end(run)
    if lease.lost.is_set():
        ctx.runs.finish(run_id, "interrupted", error="session lease lost")
        raise LeaseLost(message.session_key)
    ctx.runs.finish(run_id, "cancelled" if reply.cancelled else "done", **_run_counts(reply))
    if reply.cancelled:
        _finish(
            ctx,
            lease,
            message,
            MessageStatus.CANCELLED,
            ctx.config.agents.defaults.texts.run_stopped,
        )
        bound.info("message cancelled by /stop")
        return 0.0
    _finish(ctx, lease, message, MessageStatus.DONE, reply.text)
    bound.info(
        "message done",
        assistant_content_length=len(reply.text),
        message_content_length=len(message.text),
        elapsed_ms=round((time.monotonic() - started) * 1000),
    )
    return 0.0


def _run_counts(reply: HandlerReply) -> dict[str, int]:
    usage = getattr(reply, "usage", {}) or {}
    return {
        "llm_calls": getattr(reply, "llm_calls", 0),
        "tool_steps": getattr(reply, "tool_steps", 0),
        "total_tokens": int(usage.get("total_tokens", 0)),
    }


def _finish(
    ctx: DrainContext, lease: HeldLease, message: InboundMessage, status: MessageStatus, text: str
) -> None:
    error = ""
    if status is MessageStatus.FAILED:
        error = text
        text = ctx.config.agents.defaults.texts.message_failed % text
    # Record the reply before publishing it, so a holder that dies in between can be
    # finished by the next one from the record (see the "sent" check in _process).
    ctx.mailbox.stage_reply(message, status, text)
    reply = OutboundMessage(
        message_id=message.message_id,
        channel=message.channel,
        chat_id=message.chat_id,
        session_key=message.session_key,
        text=text,
        status=status,
        reply_to=message.reply_to,
    )
    ctx.mailbox.publish(reply)
    ctx.mailbox.complete(message, lease.token, status, text, error)
