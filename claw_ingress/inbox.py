"""Where every inbound message enters the fleet, from any channel or API.

:meth:`Inbox.accept` is the one path: the channel's access policy (chat channels only; the
APIs are behind ``gateway.token``), then slash commands (answered here, out of band), then
the session's mailbox and a drain wake-up. Answers given here (a command's reply, a pairing
code) go out through the outbound stream like the agent's replies, so they are split,
rate-limited and sent once by ``delivery.py``.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
import structlog

from claw_ingress import access
from claw_ingress.channels.base import Accepted
from claw_ingress.ratelimit import RateLimiter
from claw_worker import constants as k
from claw_worker import metrics
from claw_worker.autonomy_state import Chat, last_active_json
from claw_worker.commands import (
    CommandContext,
    is_admin,
    match_intent,
    parse_command,
    run_command,
)
from claw_worker.config import Config
from claw_worker.config.reload import LiveConfig
from claw_worker.contract import (
    InboundMessage,
    OutboundMessage,
    new_message_id,
    reply_target,
)
from claw_worker.logs import message_fields
from claw_worker.session.enqueue import AsyncMailbox

log = structlog.get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # what ``log`` writes to: asked for its level

SEEN_TTL_SEC = 86400
ANSWERED_IN_PLACE = frozenset({"api", "openai"})  # the HTTP response carries the answer
NOTICE_EVERY_SEC = 60  # a sender over its rate limit is told at most this often
SLOW_DOWN = ("You are sending messages too fast; messages are being dropped. Please wait "
             "{retry_after_sec}s and send again.")  # fmt: skip


class Inbox:
    def __init__(
        self,
        live: LiveConfig,
        client: aioredis.Redis,
        mailbox: AsyncMailbox,
    ) -> None:
        self.live = live
        self.redis = client
        self.mailbox = mailbox
        self.limiter = RateLimiter(client)

    async def accept(self, message: InboundMessage) -> Accepted:
        config = self.live.config
        section = getattr(config.channels, message.channel, None)
        # A chat message the config lets in that is no command needs no platform-event
        # mark: the mailbox drops a repeated message_id itself (ids are made from the
        # platform's), so a retry is dropped with one Redis round trip less.
        plain = section is None or (
            access.admitted_by_config(section, message.sender_id)
            and not is_command(message.text, config)
        )
        if section is not None and not plain:
            if not await self._first_time(message):
                _log("info", "duplicate message ignored", message)
                metrics.message_in(message.channel, "duplicate")
                return Accepted("duplicate", message_id=message.message_id)
            decision = await access.check(
                self.redis, message.channel, section, message.sender_id, message.chat_id,
                sender_name=str(message.metadata.get("sender_name", "")),
                in_group=message.metadata.get("group") is True,
            )  # fmt: skip
            if not decision.allowed:
                _log("warning", "sender refused", message, reason=decision.reason)
                metrics.message_in(message.channel, "refused")
                if decision.pairing_code:
                    text = access.pairing_text(decision.pairing_code)
                    await self.answer(message, text)
                    return Accepted("pairing", reply=text)
                return Accepted("refused")
        # After the access policy (a refused sender is not answered, not even "slow down"),
        # before anything that costs: commands, the mailbox, the agent.
        verdict = await self.limiter.sender(self.live, message.channel,
                                            message.sender_id or message.chat_id)  # fmt: skip
        if not verdict.allowed:
            return await self._limited(message, verdict.retry_after_sec)
        too_long = config.quotas.message_too_long(message.text)  # quotas.max_message_chars
        if too_long is not None:
            _log("warning", "message refused: too long", message, error=too_long)
            metrics.message_in(message.channel, "too_large")
            await self.answer(message, too_long)  # chat channels; the APIs answer 413
            return Accepted("too_large", message_id=message.message_id, reply=too_long)
        if message.channel not in ANSWERED_IN_PLACE:  # where heartbeats and autonomy report
            chat = Chat(message.channel, message.chat_id, message.session_key, time.time())
            await self.mailbox.commands.execute("SET", k.LAST_ACTIVE, last_active_json(chat))
        ctx = CommandContext(
            self.redis, config, message.session_key,
            admin=is_admin(config, message.channel, message.sender_id),
            channel=message.channel, sender_id=message.sender_id, chat_id=message.chat_id,
        )  # fmt: skip
        reply = await run_command(ctx, message.text)
        if reply is not None:
            _log("info", "command answered", message)
            metrics.message_in(message.channel, "command")
            await self.answer(message, reply)
            return Accepted("command", reply=reply)
        enqueued = await self.mailbox.enqueue(message)  # stores it and wakes the session
        if not enqueued.stored:
            _log("info", "duplicate message ignored", message)
            metrics.message_in(message.channel, "duplicate")
            return Accepted("duplicate", message_id=message.message_id, run_id=enqueued.run_id)
        # DEBUG: at INFO this line cost as much as the rest of accepting the message
        # (README "The accept path"). Every message's trail at INFO: "message started" and
        # "message done|failed|cancelled" (the worker, with these fields and the queue
        # wait), "message delivered"; the count per channel: /metrics.
        _log("debug", "message received", message)
        metrics.message_in(message.channel, "queued")
        return Accepted("queued", message_id=message.message_id, run_id=enqueued.run_id)

    async def _limited(self, message: InboundMessage, retry_after_sec: int) -> Accepted:
        """A message over its sender's rate limit: dropped, logged, and the sender of a chat
        channel told once a minute (the APIs and /ws say so in their answer)."""
        _log("warning", "message dropped: sender over its rate limit", message,
             retry_after_sec=retry_after_sec)  # fmt: skip
        metrics.message_in(message.channel, "limited")
        sender = f"{message.channel}:{message.sender_id or message.chat_id}"
        if message.channel not in ANSWERED_IN_PLACE and message.channel != "ws":
            first = await self.mailbox.commands.execute(
                "SET", k.rate_notice_key(sender), "1", "NX", "EX", NOTICE_EVERY_SEC
            )
            if first:
                await self.answer(message, SLOW_DOWN.format(retry_after_sec=retry_after_sec))
        return Accepted("limited", message_id=message.message_id,
                        retry_after_sec=retry_after_sec)  # fmt: skip

    async def _first_time(self, message: InboundMessage) -> bool:
        """Whether this chat message is new. Adapters derive message ids from the platform's
        (``telegram-<chat>-<id>``), so a platform's retry, an update polled again, or the
        same event heard by two ingress replicas is taken in once: slash commands included,
        which the mailbox's own dedupe never sees."""
        key = k.platform_event_key(message.channel, message.message_id)
        return bool(await self.mailbox.commands.execute("SET", key, "1", "NX", "EX", SEEN_TTL_SEC))

    async def answer(self, message: InboundMessage, text: str) -> None:
        """Send ``text`` back to the chat ``message`` came from, outside the agent."""
        if message.channel in ANSWERED_IN_PLACE:
            return
        out = OutboundMessage(
            message_id=new_message_id(),
            channel=message.channel,
            chat_id=message.chat_id,
            session_key=message.session_key,
            text=text,
            reply_to=reply_target(message),
            metadata={"kind": "answer"},
        )
        await self.redis.xadd(k.OUTBOUND_STREAM, {"data": out.model_dump_json()},
                              maxlen=k.OUTBOUND_MAXLEN, approximate=True)  # fmt: skip


def _log(level: str, event: str, message: InboundMessage, **fields: object) -> None:
    """One line about ``message``, with the fields its events are searched by (no bound
    logger per message: binding cost ~5 µs, logged or not; nothing at all when the level
    is off)."""
    if not _stdlib_log.isEnabledFor(logging.getLevelName(level.upper())):
        return
    getattr(log, level)(event, **message_fields(message), **fields)


def is_command(text: str, config: Config) -> bool:
    """Whether :func:`run_command` would answer ``text`` (what it looks for, without running
    it)."""
    return parse_command(text) is not None or match_intent(text, config) is not None
