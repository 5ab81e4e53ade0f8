"""Draining one session's mailbox: the body of the ``claw.session.drain`` task.

lease → take (in-flight first) → run → publish reply once → complete → … → release, and a
new drain when messages are left.

A failed run is judged by its error (``judge``): a refusal that asking again cannot cure
(an invalid request, refused credentials, no model that serves it) fails the message at
once with a reply that says why; a rate limit waits for its Retry-After; transient trouble
(5xx, resets, timeouts, broken streams) and unexpected errors back off exponentially, up to
``worker.max_attempts`` runs. A retry never sleeps in the worker slot: the message is
deferred (``Mailbox.defer``), the lease released and a drain sent with a countdown.

A message that names resource keys (``[keys: ...]``, or a task whose text names files,
repositories, branches: claw_worker/work/lock_keys.py) takes them all before it runs and
frees them when it is over; refused, it waits in ``resource_lock`` the same way, tried
again after ``worker.resource_lock_retry_sec`` (claw_worker/work/locks.py). So does a
message whose sender has ``quotas.max_runs_per_sender`` runs going on (claw_worker/quotas.py),
tried again after ``quotas.sender_busy_retry_sec``; one over ``quotas.max_message_chars``
(from cron or a pipeline: the ingress refuses the others) fails at once, saying why.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from claw_worker import metrics
from claw_worker.config import Config
from claw_worker.contract import (
    InboundMessage,
    MessageStatus,
    Origin,
    OutboundMessage,
    reply_route,
    reply_target,
)
from claw_worker.logs import message_fields
from claw_worker.providers.base import ErrorKind, ProviderError
from claw_worker.quotas import SenderRuns
from claw_worker.reply_filter import filter_reply
from claw_worker.session.leases import HeldLease, LeaseKeeper
from claw_worker.session.mailbox import LeaseLost, Mailbox
from claw_worker.session.runs import RunRecorder
from claw_worker.session.stop import CancelListener
from claw_worker.work.lock_keys import KeyDeclarationError, resource_keys
from claw_worker.work.locks import HeldKeys, ResourceLocks

log = structlog.get_logger(__name__)

MAX_BATCH = 20  # messages per drain before yielding the worker slot to other sessions
MAX_BACKOFF_SEC = 60.0
# The longest a message waits for a retry: a server asking for more (a rate limit of an
# hour) fails it now with a reply that says so, rather than holding up its session.
MAX_RETRY_AFTER_SEC = 300.0
MIN_RETRY_SEC = 0.1  # a retry is always a positive delay ("Retry-After: 0" included)

# What the user is told when a message fails for a provider error, before the details.
FAILURE_REASONS = {
    ErrorKind.INVALID_REQUEST: "the LLM refused the request as invalid",
    ErrorKind.AUTH: "the LLM provider refused the credentials or the account",
    ErrorKind.UNKNOWN_MODEL: "no configured LLM proxy serves the model",
    ErrorKind.CONTEXT_TOO_LONG: "the conversation is too long for the model, even compacted",
    ErrorKind.BAD_RESPONSE: "the LLM endpoint did not answer like an LLM (api_base/protocol)",
    ErrorKind.RATE_LIMIT: "the LLM provider is rate limiting",
    ErrorKind.TRANSIENT: "the LLM provider kept failing",
}


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
    # Called once a message is finished (message, status, reply text, error): how internal
    # origins learn their outcome (a cron job's last status, an autonomy round).
    on_finished: Callable[[InboundMessage, MessageStatus, str, str], None] | None = None
    locks: ResourceLocks | None = None  # None: resource keys are not taken
    sender_runs: SenderRuns | None = None  # None: quotas.max_runs_per_sender is not applied
    # True once the worker is stopping (warm shutdown): the message under way finishes,
    # and the rest of the session goes to another worker instead of holding this one up.
    shutting_down: Callable[[], bool] = lambda: False


def backoff_sec(attempt: int) -> float:
    return min(MAX_BACKOFF_SEC, 2.0**attempt)


@dataclass(frozen=True)
class Verdict:
    """What a failed run means for its message."""

    error: str  # for the record, the run and (when it fails) the user's reply
    retry_in: float | None  # seconds until the next run; None: fail the message now
    expected: bool  # a provider error (no traceback worth logging), not a bug


def judge(exc: Exception, attempt: int, max_attempts: int) -> Verdict:
    """Decide by the error's kind: provider refusals fail now, rate limits wait for their
    Retry-After, transient errors back off exponentially. Any other exception may be a bug
    or a passing fault (Redis restarting): it backs off like a transient error."""
    expected = isinstance(exc, ProviderError)
    if isinstance(exc, ProviderError):
        kind, wait = exc.kind, exc.retry_after
        error = f"{FAILURE_REASONS[kind]} ({kind}): {exc}"[:500]
        if not kind.retryable:
            return Verdict(error, None, expected)
        if wait is not None and wait > MAX_RETRY_AFTER_SEC:
            return Verdict(f"asked to wait {wait:.0f}s: {error}"[:500], None, expected)
        delay = wait if wait is not None else backoff_sec(attempt)
    else:
        error = f"{type(exc).__name__}: {exc}"[:500]
        delay = backoff_sec(attempt)
    if attempt >= max_attempts:
        return Verdict(error, None, expected)
    return Verdict(error, max(MIN_RETRY_SEC, delay), expected)


def drain_session(ctx: DrainContext, session_key: str) -> int:
    """Process the session's messages in order; returns how many were finished."""
    token = uuid.uuid4().hex
    if not ctx.mailbox.acquire(session_key, token):
        return 0  # the holder drains; its release sends another drain if mail is left
    lease = ctx.leases.hold(session_key, token)
    finished, retry_in = 0, 0.0
    try:
        while finished < MAX_BATCH and not lease.lost.is_set() and not ctx.shutting_down():
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
        # A previous holder published the reply but died before completing: finish it, with
        # the hooks it never reached (a sub-agent's report, a pipeline task's result).
        status = MessageStatus(record.get("final_status") or MessageStatus.DONE.value)
        reply = record.get("reply", "")
        error = reply if status is MessageStatus.FAILED else ""
        _complete(ctx, lease, message, status, reply, error)
        return 0.0
    not_before = float(record.get("not_before") or 0)
    if not_before > time.time():
        return not_before - time.time()
    refused = ctx.config.quotas.message_too_long(message.text)
    if refused is not None:  # from cron or a pipeline: the ingress refuses the others
        _fail_now(ctx, lease, message, record, refused)
        return 0.0
    counted, wait = _take_sender_run(ctx, lease, message, record)
    if wait is not None:
        return wait
    try:
        held, wait = _take_keys(ctx, lease, message, record)
        if wait is not None:
            return wait
        try:
            return _run(ctx, lease, message, recovered, record)
        finally:
            if held is not None and ctx.locks is not None:
                ctx.locks.release(held)
    finally:
        if counted and ctx.sender_runs is not None:
            ctx.sender_runs.release(message, lease.token)


def _fail_now(
    ctx: DrainContext, lease: HeldLease, message: InboundMessage, record: dict[str, str], error: str
) -> None:
    if record.get("run_id"):
        ctx.runs.finish(record["run_id"], "failed", error=error)
    log.warning("message failed", **message_fields(message), error=error)
    _finish(ctx, lease, message, MessageStatus.FAILED, error)


def _take_sender_run(
    ctx: DrainContext, lease: HeldLease, message: InboundMessage, record: dict[str, str]
) -> tuple[bool, float | None]:
    """Count the run toward its sender's quotas.max_runs_per_sender: (counted, None to run
    now), or (False, seconds until it is tried again) while the sender has that many runs
    going on: the message waits queued, as for resource keys (claw_worker/quotas.py)."""
    runs = ctx.sender_runs
    if runs is None or not runs.limited(ctx.config, message):
        return False, None
    retry = ctx.config.quotas.sender_busy_retry_sec
    busy = runs.acquire(ctx.config, message, lease.token, stale_sec=_stale_after(ctx, retry))
    if busy is None:
        return True, None
    waiting = ctx.config.agents.defaults.texts.sender_busy % busy.going
    if busy.ahead:
        waiting += f"; {busy.ahead} of its messages waiting before this one"
    ctx.mailbox.defer(message, not_before=time.time() + retry, error=f"sender_busy: {waiting}")
    if record.get("run_id"):
        ctx.runs.note(record["run_id"], "sender_busy", lock_wait=waiting)
    log.info("waiting for the sender's other runs", **message_fields(message), retry_in=retry)
    return False, retry


def _stale_after(ctx: DrainContext, retry: float) -> float:
    """How long a waiter (for resource keys, for its sender's run slot) that stops trying
    keeps its place: a few of its retries, and a dead worker's lease expiring and the
    sweeper sending its session again."""
    worker = ctx.config.worker
    return 3 * retry + 2 * worker.lease_sec + worker.sweep_interval_sec


def _take_keys(
    ctx: DrainContext, lease: HeldLease, message: InboundMessage, record: dict[str, str]
) -> tuple[HeldKeys | None, float | None]:
    """The message's resource keys, all or none: (the keys held, None to run now) or (None,
    seconds until it is tried again; 0 when it failed for a declaration it cannot read)."""
    if ctx.locks is None:
        return None, None
    run_id = record.get("run_id")
    try:
        keys = resource_keys(message)
    except KeyDeclarationError as exc:
        if run_id:
            ctx.runs.finish(run_id, "failed", error=str(exc))
        log.warning("message failed", **message_fields(message), error=str(exc))
        _finish(ctx, lease, message, MessageStatus.FAILED, str(exc))
        return None, 0.0
    if not keys:
        return None, None
    retry = ctx.config.worker.resource_lock_retry_sec
    attempt = ctx.locks.acquire(message.message_id, keys, stale_sec=_stale_after(ctx, retry))
    metrics.LOCK_ATTEMPTS.labels("acquired" if attempt.held is not None else "waiting").inc()
    if attempt.held is not None:
        return attempt.held, None
    waiting = f"waiting for {attempt.describe()}"
    ctx.mailbox.defer(message, not_before=time.time() + retry, error=f"resource_lock: {waiting}")
    if run_id:
        ctx.runs.note(
            run_id, "resource_lock", lock_wait=waiting, lock_keys=", ".join(keys),
            lock_since=attempt.since,
        )  # fmt: skip
    log.info(
        "waiting for resource keys", session_key=message.session_key,
        message_id=message.message_id, blocked=[key for key, _ in attempt.blocked], retry_in=retry,
    )  # fmt: skip
    return None, retry


def _run(
    ctx: DrainContext,
    lease: HeldLease,
    message: InboundMessage,
    recovered: bool,
    record: dict[str, str],
) -> float:
    attempt = ctx.mailbox.mark_running(message)
    max_attempts = ctx.config.worker.max_attempts
    # Every event of the run carries the SPEC's fields of its message (claw_worker/logs.py).
    bound = log.bind(**message_fields(message), attempt=attempt)
    if recovered and record.get("status") == MessageStatus.RUNNING.value:
        bound.info("re-running a message left in flight")
    elif recovered:
        bound.info("retrying a deferred message", previous_error=record.get("error", ""))
    if attempt > max_attempts:
        bound.error("message failed", error="gave up after repeated failures")
        _finish(ctx, lease, message, MessageStatus.FAILED, "gave up after repeated failures")
        return 0.0

    started = time.monotonic()
    run_id = ctx.runs.start(
        message.session_key, message.message_id, attempt, record.get("run_id") or None
    )
    bound = bound.bind(run_id=run_id)
    waited = time.time() - float(record.get("queued_at") or time.time())
    if attempt == 1:
        metrics.queue_wait(message.channel, waited)
    bound.info("message started", queue_wait_ms=round(waited * 1000))
    run = ctx.cancels.begin(message.session_key)
    stop_requested = ctx.cancels.should_stop(run)

    def should_stop() -> bool:
        return lease.lost.is_set() or stop_requested()

    def ended(outcome: str) -> int:
        elapsed = time.monotonic() - started
        metrics.run_finished(message.channel, outcome, elapsed)
        return round(elapsed * 1000)

    try:
        with metrics.run_in_progress():
            reply = ctx.handler(message, should_stop)
    except LeaseLost:
        ctx.runs.finish(run_id, "interrupted", error="session lease lost")
        ended("interrupted")
        raise
    except Exception as exc:  # judged by its kind: failed now, or retried later
        verdict = judge(exc, attempt, max_attempts)
        retrying = verdict.retry_in is not None
        ctx.runs.finish(run_id, "retrying" if retrying else "failed", error=verdict.error)
        elapsed_ms = ended("retrying" if retrying else "failed")
        if not verdict.expected and record.get("error") != verdict.error:
            # Maybe a bug: its traceback, once (a retry failing the same way adds a line).
            bound.exception("run raised an unexpected error", error=verdict.error)
        if verdict.retry_in is None:
            bound.error("message failed", error=verdict.error, elapsed_ms=elapsed_ms)
            _finish(ctx, lease, message, MessageStatus.FAILED, verdict.error)
            return 0.0
        bound.warning("run failed, will retry", error=verdict.error, retry_in=verdict.retry_in)
        not_before = time.time() + verdict.retry_in
        ctx.mailbox.defer(message, not_before=not_before, error=verdict.error)
        return verdict.retry_in
    finally:
        ctx.cancels.end(run)
    if lease.lost.is_set():
        ctx.runs.finish(run_id, "interrupted", error="session lease lost")
        ended("interrupted")
        raise LeaseLost(message.session_key)
    ctx.runs.finish(run_id, "cancelled" if reply.cancelled else "done", **_run_counts(reply))
    outcome = MessageStatus.CANCELLED if reply.cancelled else MessageStatus.DONE
    text = ctx.config.agents.defaults.texts.run_stopped if reply.cancelled else reply.text
    _finish(ctx, lease, message, outcome, text)
    bound.info(
        "message cancelled" if reply.cancelled else "message done",
        assistant_content_length=len(reply.text),
        transcript_length=getattr(reply, "transcript_length", None),
        elapsed_ms=ended(outcome.value),
    )
    return 0.0


def _run_counts(reply: HandlerReply) -> dict[str, int]:
    usage = getattr(reply, "usage", {}) or {}
    return {
        "llm_calls": getattr(reply, "llm_calls", 0),
        "tool_steps": getattr(reply, "tool_steps", 0),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "total_tokens": int(usage.get("total_tokens", 0)),
    }


def _finish(
    ctx: DrainContext, lease: HeldLease, message: InboundMessage, status: MessageStatus, text: str
) -> None:
    text, error = filter_reply(ctx.config, text), ""  # users and the record see no secret
    if status is MessageStatus.FAILED:
        error = text
        text = ctx.config.agents.defaults.texts.message_failed % text
    # Record the reply before publishing it, so a holder that dies in between can be
    # finished by the next one from the record (see the "sent" check in _process).
    ctx.mailbox.stage_reply(message, status, text)
    channel, chat_id = reply_route(message, status, text)
    reply = OutboundMessage(
        message_id=message.message_id,
        channel=channel,
        chat_id=chat_id,
        session_key=message.session_key,
        text=text,
        status=status,
        reply_to=reply_target(message) if channel == message.channel else None,
        metadata={"origin": message.origin.value} if message.origin is not Origin.USER else {},
    )
    ctx.mailbox.publish(reply)
    _complete(ctx, lease, message, status, text, error)


def _complete(ctx: DrainContext, lease: HeldLease, message: InboundMessage,
              status: MessageStatus, text: str, error: str) -> None:  # fmt: skip
    ctx.mailbox.complete(message, lease.token, status, text, error)
    if ctx.on_finished is not None:
        try:  # a cron job's last status, an autonomy round's count: never fails the run
            ctx.on_finished(message, status, text, error)
        except Exception as exc:
            log.error("finish hook failed", message_id=message.message_id, error=repr(exc))
