"""``message``: send a text to a chat on a channel that can deliver it, outside the reply.

It puts an ``OutboundMessage`` on the outbound stream, exactly where a worker's replies go,
so the ingress delivers it through the same channel adapters. Only channels that can
deliver are offered: a chat channel enabled in the config with its credentials set. The
gateway's HTTP API (``api``) is not one: an API caller receives only the reply to its own
message, so the model is told to put the text in its answer instead.

A post is made once per (message being answered, channel, chat, text): a run repeated after
a crash or a transient failure does not send the same text again (a mark set in the same
Lua call as the XADD, as for replies). It needs the fleet's Redis (``ToolContext.redis``);
outside a worker the tool says so instead of failing obscurely.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field

from claw_worker.config.channels import ChannelConfig, ChannelsConfig
from claw_worker.constants import OUTBOUND_MAXLEN, OUTBOUND_STREAM, reply_sent_key
from claw_worker.contract import MessageStatus, OutboundMessage, new_message_id
from claw_worker.reply_filter import filter_reply
from claw_worker.session.scripts import PUBLISH_ONCE
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

API_CHANNEL = "api"  # the gateway's HTTP API: it answers each request with its reply only


def can_deliver(section: BaseModel) -> bool:
    """A channel can deliver when it is enabled and every setting it cannot work without
    is set (``ChannelConfig.missing``: a token, an app id and secret, a bridge URL)."""
    return isinstance(section, ChannelConfig) and section.enabled and not section.missing()


def deliverable_channels(channels: ChannelsConfig) -> list[str]:
    """The channels a message can be sent to with this config, in the config's order."""
    return [name for name in ChannelsConfig.model_fields if can_deliver(getattr(channels, name))]


class MessageParams(ToolParams):
    channel: str = Field(min_length=1, max_length=64, description="The channel to send on.")
    chat_id: str = Field(min_length=1, max_length=256, description="The chat to send to.")
    text: str = Field(min_length=1, max_length=20000, description="The message text.")


class MessageTool(Tool[MessageParams]):
    name = "message"
    Params = MessageParams

    def __init__(self, channels: ChannelsConfig) -> None:
        self.channels = deliverable_channels(channels)
        if self.channels:
            self.description = (
                "Send a text message to a chat on a chat channel, outside your reply (for "
                "example to notify someone other than the current chat). Channels that can "
                f"deliver: {', '.join(self.channels)}. The current chat gets your reply: "
                "do not send it the same text."
            )
        else:
            self.description = (
                "Send a text message to a chat on a chat channel. No channel can deliver "
                "now: none is enabled in the config (channels.<name>) with its credentials, "
                "so every call fails; tell the user that instead."
            )

    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        if self.channels:  # an enum may not be empty
            channel = schema["function"]["parameters"]["properties"]["channel"]
            channel["enum"] = list(self.channels)
        return schema

    def execute(self, params: MessageParams, ctx: ToolContext) -> str:
        channel = params.channel.strip().lower()  # "Telegram" is telegram
        self._check_channel(channel)
        if ctx.redis is None:
            raise ToolError("message tool needs the fleet (no Redis connection in this run)")
        answering = ctx.message_id
        post = (channel, params.chat_id, params.text)
        message = OutboundMessage(
            message_id=_post_id(answering, *post) if answering else new_message_id(),
            channel=channel,
            chat_id=params.chat_id,
            session_key=f"{channel}:{params.chat_id}",
            text=filter_reply(ctx.config, params.text),  # leaves towards a user
            status=MessageStatus.DONE,
            # Lets the ingress (and a reader of the stream) tell it from a reply.
            metadata={"kind": "tool_message", "from_session": ctx.session_key},
        )
        where = f"{channel}:{params.chat_id}"
        if not answering:  # not a worker's run (a one-off CLI turn): nothing to repeat
            ctx.redis.xadd(
                OUTBOUND_STREAM,
                {"data": message.model_dump_json()},
                maxlen=OUTBOUND_MAXLEN,
                approximate=True,
            )
        elif not ctx.redis.register_script(PUBLISH_ONCE)(
            keys=[reply_sent_key(message.message_id), OUTBOUND_STREAM],
            args=[message.model_dump_json(), ctx.config.worker.message_ttl_sec, OUTBOUND_MAXLEN],
        ):
            return (
                f"Message to {where} was already sent for this request (an earlier attempt "
                "of this run sent it); not sent again."
            )
        return f"Message sent to {where} ({len(params.text)} chars)"

    def _check_channel(self, channel: str) -> None:
        can = ", ".join(self.channels) or "none"
        if channel == API_CHANNEL:
            raise ToolError(
                "the api channel cannot receive messages outside a reply: an API caller gets "
                "only the reply to its own request. To tell the current chat something, put "
                f"it in your answer. Channels that can deliver: {can}"
            )
        if channel in self.channels:
            return
        if channel in ChannelsConfig.model_fields:
            raise ToolError(
                f"channel {channel!r} cannot deliver messages: it is not enabled with its "
                f"credentials in the config (channels.{channel}). Channels that can deliver: "
                f"{can}"
            )
        raise ToolError(f"unknown channel {channel!r}; channels that can deliver: {can}")


def _post_id(answering: str, *post: str) -> str:
    """The same id for the same post (channel, chat, text) while answering the same
    message, so a repeated run finds the mark its earlier attempt left."""
    digest = hashlib.sha256("\0".join(post).encode()).hexdigest()
    return f"{answering}.message.{digest[:32]}"
