"""``message``: send a text to a chat on any channel, outside the current reply.

It puts an ``OutboundMessage`` on the outbound stream, exactly where a worker's replies go,
so the ingress delivers it through the same channel adapters. It needs the fleet's Redis
(``ToolContext.redis``); outside a worker the tool says so instead of failing obscurely.
"""

from __future__ import annotations

from pydantic import Field

from claw_worker.config.channels import ChannelsConfig
from claw_worker.constants import OUTBOUND_MAXLEN, OUTBOUND_STREAM
from claw_worker.contract import MessageStatus, OutboundMessage, new_message_id
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

# "api" is the HTTP ingress's own channel; the others are the chat adapters in config.
KNOWN_CHANNELS = ("api", *ChannelsConfig.model_fields)


class MessageParams(ToolParams):
    channel: str = Field(min_length=1, max_length=64, description="e.g. telegram, discord, api.")
    chat_id: str = Field(min_length=1, max_length=256, description="The chat to send to.")
    text: str = Field(min_length=1, max_length=20000, description="The message text.")


class MessageTool(Tool[MessageParams]):
    name = "message"
    description = (
        "Send a text message to a chat on a channel (for example to notify someone other "
        f"than the current chat). Channels: {', '.join(KNOWN_CHANNELS)}."
    )
    Params = MessageParams

    def execute(self, params: MessageParams, ctx: ToolContext) -> str:
        if params.channel not in KNOWN_CHANNELS:
            raise ToolError(
                f"unknown channel {params.channel!r}; known channels: {', '.join(KNOWN_CHANNELS)}"
            )
        if ctx.redis is None:
            raise ToolError("message tool needs the fleet (no Redis connection in this run)")
        message = OutboundMessage(
            message_id=new_message_id(),
            channel=params.channel,
            chat_id=params.chat_id,
            session_key=f"{params.channel}:{params.chat_id}",
            text=params.text,
            status=MessageStatus.DONE,
            # Lets the ingress (and a reader of the stream) tell it from a reply.
            metadata={"kind": "tool_message", "from_session": ctx.session_key},
        )
        ctx.redis.xadd(
            OUTBOUND_STREAM,
            {"data": message.model_dump_json()},
            maxlen=OUTBOUND_MAXLEN,
            approximate=True,
        )
        return f"Message sent to {params.channel}:{params.chat_id} ({len(params.text)} chars)"
