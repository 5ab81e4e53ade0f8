"""Waiting for the reply to one message, for ``/api/message``'s ``wait`` and the
OpenAI-compatible API: the outbound stream (``outbound.py``), with the message record
polled as a fallback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from claw_worker.contract import MessageStatus

STATUS_POLL_SEC = 1.0  # fallback poll of the record while waiting for a reply


@dataclass(frozen=True)
class Reply:
    status: str  # done | failed | cancelled (the message's), or timeout | disconnected
    text: str = ""


async def wait_for_reply(
    state: Any,
    message_id: str,
    waiter: asyncio.Future[Any],
    timeout: float,
    *,
    session_key: str,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> Reply:
    """The reply to ``message_id`` of ``session_key``: from ``waiter``
    (``state.outbound.expect``), or from the message record when the stream reader missed
    it (a reconnect); forgets the waiter. The record is read every ``STATUS_POLL_SEC``, and
    at the deadline only when the reader had a gap meanwhile (else the reply, had it come,
    would be in ``waiter``: a short wait costs no extra Redis call). ``disconnected`` is
    asked after each poll while time is left."""
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            # (asyncio.wait leaves the waiter be: no shield and no task, as wait_for needs)
            if (await asyncio.wait((waiter,), timeout=min(remaining, STATUS_POLL_SEC)))[0]:
                reply = waiter.result()
                return Reply(reply.status.value, reply.text)
            if remaining < STATUS_POLL_SEC and not state.outbound.may_have_missed(message_id):
                break  # the deadline, and every reply since the request came was handed over
            with contextlib.suppress(RedisError):
                found = await state.mailbox.outcome(message_id, session_key)
                if found and MessageStatus(found[0]).finished:
                    return Reply(*found)
            if deadline <= time.monotonic():
                break
            if disconnected is not None and await disconnected():
                return Reply("disconnected")
    finally:
        state.outbound.forget(message_id, waiter)
    return Reply("timeout")
