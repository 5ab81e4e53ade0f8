"""Where every inbound message enters the fleet, from any channel or API.

:meth:`Inbox.accept` is the one path: the channel's access policy (chat channels only; the
APIs are behind ``gateway.token``), then slash commands (answered here, out of band), then
the session's mailbox and a drain wake-up. Answers given here (a command's reply, a pairing
code) go out through the outbound stream like the agent's replies, so they are split,
rate-limited and sent once by ``delivery.py``.
"""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from claw_ingress import access
from claw_ingress.channels.base import Accepted
from claw_worker import constants as k
from claw_worker.commands import CommandContext, is_admin, run_command
from claw_worker.config.reload import LiveConfig
from claw_worker.contract import (
    InboundMessage,
    OutboundMessage,
    new_message_id,
    reply_target,
)
from claw_worker.session.enqueue import AsyncMailbox

log = structlog.get_logger(__name__)

PREVIEW_CHARS = 80
SEEN_TTL_SEC = 86400
ANSWERED_IN_PLACE = frozenset({"api", "openai"})  # the HTTP response carries the answer


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

    async def accept(self, message: InboundMessage) -> Accepted:
        config = self.live.config
        bound = log.bind(
            channel=message.channel, chat_id=message.chat_id, sender_id=message.sender_id,
            session_key=message.session_key, preview=message.text[:PREVIEW_CHARS],
            message_content_length=len(message.text),
        )  # fmt: skip
        section = getattr(config.channels, message.channel, None)
        if section is not None and not await self._first_time(message):
            bound.info("duplicate message ignored", message_id=message.message_id)
            return Accepted("duplicate", message_id=message.message_id)
        if section is not None:
            decision = await access.check(
                self.redis, message.channel, section, message.sender_id, message.chat_id,
                sender_name=str(message.metadata.get("sender_name", "")),
            )  # fmt: skip
            if not decision.allowed:
                bound.warning("sender refused", reason=decision.reason)
                if decision.pairing_code:
                    text = access.pairing_text(decision.pairing_code)
                    await self.answer(message, text)
                    return Accepted("pairing", reply=text)
                return Accepted("refused")
        ctx = CommandContext(
            self.redis, config, message.session_key,
            admin=is_admin(config, message.channel, message.sender_id),
            channel=message.channel, sender_id=message.sender_id,
        )  # fmt: skip
        reply = await run_command(ctx, message.text)
        if reply is not None:
            bound.info("command answered")
            await self.answer(message, reply)
            return Accepted("command", reply=reply)
        enqueued = await self.mailbox.enqueue(message)  # stores it and wakes the session
        bound.info("message received", message_id=message.message_id, stored=enqueued.stored)
        status = "queued" if enqueued.stored else "duplicate"
        return Accepted(status, message_id=message.message_id, run_id=enqueued.run_id)

    async def _first_time(self, message: InboundMessage) -> bool:
        """Whether this chat message is new. Adapters derive message ids from the platform's
        (``telegram-<chat>-<id>``), so a platform's retry, an update polled again, or the
        same event heard by two ingress replicas is taken in once: slash commands included,
        which the mailbox's own dedupe never sees."""
        key = k.platform_event_key(message.channel, message.message_id)
        return bool(await self.redis.set(key, "1", nx=True, ex=SEEN_TTL_SEC))

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
