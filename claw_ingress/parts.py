"""Sending one outbound message through its channel, in parts, once.

The text is split at the platform's limit keeping code fences (``text.py``); each part
goes out after a token from the channel's bucket (``rate_per_sec``, ``burst``; at most
``PARALLEL_SENDS`` of a channel's sends in flight), a 429 waited out for its
``retry_after``, a permanent refusal given up, other failures retried ``MAX_RETRIES``
times. The parts sent are counted in ``claw:delivered:{outbound}:<message_id>``, so a
message tried again (by this replica, or by the next leader) resumes after its last part.
``delivery.py`` decides what to send and when; this sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
import structlog

from claw_ingress.channels.base import Channel, SendError
from claw_ingress.text import split_text
from claw_ingress.token_bucket import TokenBucket
from claw_worker import constants as k
from claw_worker import metrics
from claw_worker.contract import OutboundMessage

log = structlog.get_logger("claw_ingress.delivery")  # its events, as they always were

MAX_RETRIES = 5
MAX_RETRY_AFTER_SEC = 300.0
DELIVERED_TTL_SEC = 7 * 86400
PARALLEL_SENDS = 4  # a channel's sends in flight at once (different chats; within its bucket)


class Progress:
    """The parts of one entry this replica has sent (Redis counts them too, when it can)."""

    def __init__(self) -> None:
        self.sent = 0


class PartSender:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._buckets: dict[str, TokenBucket] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}  # PARALLEL_SENDS per channel

    def _bucket(self, channel: Channel) -> TokenBucket:
        cfg = channel.config
        bucket = self._buckets.get(channel.name)
        if bucket is None or (bucket.rate, bucket.burst) != (cfg.rate_per_sec, cfg.burst):
            bucket = self._buckets[channel.name] = TokenBucket(cfg.rate_per_sec, cfg.burst)
        return bucket

    async def deliver(self, channel: Channel, message: OutboundMessage, progress: Progress) -> bool:
        """Send every part not sent yet; True when the entry is finished (sent, or refused
        for good), False to leave it pending for a later try. ``progress`` carries the
        parts sent from one try to the next, for when Redis could not record them."""
        key = k.delivered_key(message.message_id)
        state = await self.redis.hgetall(key)
        if state.get("done"):
            return True
        parts = split_text(message.text or " ", channel.max_text, length=channel.text_length)
        sent = max(int(state.get("parts") or 0), progress.sent)
        bound = log.bind(channel=channel.name, chat_id=message.chat_id,
                         session_key=message.session_key, message_id=message.message_id)  # fmt: skip
        for index in range(sent, len(parts)):
            outcome = await self._send_part(channel, message, parts[index], index, bound)
            if outcome == "sent":
                progress.sent = index + 1
            if outcome == "retry_later":
                metrics.delivered(channel.name, "retry_later", parts=index - sent)
                return False
            if outcome == "refused":
                await self.redis.hset(key, mapping={"done": 1, "error": "refused"})
                await self.redis.expire(key, DELIVERED_TTL_SEC)
                metrics.delivered(channel.name, "refused", parts=index - sent)
                return True
            await self.redis.hset(key, "parts", index + 1)  # (a retry may have skipped some)
            await self.redis.expire(key, DELIVERED_TTL_SEC)
        await self.redis.hset(key, "done", 1)
        metrics.delivered(channel.name, "delivered", parts=len(parts) - sent)
        bound.info("message delivered", parts=len(parts), status=message.status.value,
                   output_content_length=len(message.text))  # fmt: skip
        with contextlib.suppress(Exception):
            await channel.on_delivered(message.message_id, message.chat_id)
        return True

    async def _send_part(
        self, channel: Channel, message: OutboundMessage, text: str, index: int, bound: Any
    ) -> str:
        reply_to = message.reply_to if index == 0 else None  # the first part quotes it
        for attempt in range(1, MAX_RETRIES + 1):
            await self._bucket(channel).take()
            try:
                async with self._slots.setdefault(channel.name, asyncio.Semaphore(PARALLEL_SENDS)):
                    await channel.send(message.chat_id, text, reply_to=reply_to)
                return "sent"
            except SendError as exc:
                if exc.permanent:
                    bound.error("the platform refused the message", error=str(exc))
                    return "refused"
                asked = exc.retry_after if exc.retry_after and exc.retry_after > 0 else None
                wait = min(asked or 2.0**attempt, MAX_RETRY_AFTER_SEC)  # (NaN > 0 is False)
                bound.warning("send failed, retrying", error=str(exc), retry_in=wait)
            except Exception as exc:  # network trouble, a bug in an adapter: try again
                wait = 2.0**attempt
                bound.warning("send failed, retrying", error=repr(exc), retry_in=wait)
            metrics.delivery_retry(channel.name)
            await asyncio.sleep(wait)
        bound.error("send kept failing: left for a later try")
        return "retry_later"
