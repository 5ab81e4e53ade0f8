"""``clawctl channel test --channel NAME --to ID -m TEXT``: send through a real adapter.

A channel that sends over the platform's API (Telegram, Discord, Feishu, ...) is run right
here, with the config's credentials, and the platform's answer is reported. A channel whose
replies go through a live connection (the WebSocket, MaixCam) is reached through the
running fleet: the message goes on the outbound stream and the ingress replica holding the
chat's connection sends it.
"""

from __future__ import annotations

import asyncio
import time

import click

from claw_worker.cli._common import CliError, load
from claw_worker.config.schema import Config

CONNECTION_WAIT_SEC = 15.0


@click.group()
def channel() -> None:
    """Chat channels: send a test message."""


@channel.command("test")
@click.option("--channel", "name", required=True, help="channel name, e.g. telegram")
@click.option("--to", "chat_id", required=True, help="the chat (or user) id to send to")
@click.option("-m", "--message", "text", required=True, help="the text to send")
def test_cmd(name: str, chat_id: str, text: str) -> None:
    """Send TEXT to a chat through channel NAME and report what the platform said."""
    from claw_ingress.channels import CHANNELS, channel_class

    if name not in CHANNELS and name != "ws":
        raise CliError(f"no channel named {name!r}; channels: {', '.join(CHANNELS)}, ws")
    if not text.strip():
        raise CliError("the message is empty")
    config = load()
    adapter = channel_class(name)
    if adapter.connection_bound:
        click.echo(asyncio.run(_through_fleet(config, name, chat_id, text)))
    else:
        click.echo(asyncio.run(_direct(config, name, chat_id, text)))


async def _direct(config: Config, name: str, chat_id: str, text: str) -> str:
    import httpx
    import redis.asyncio as aioredis

    from claw_ingress.channels import channel_class
    from claw_ingress.channels.base import ChannelContext, ChannelError, SendError
    from claw_ingress.text import split_text
    from claw_worker.config.reload import LiveConfig
    from claw_worker.redis_conn import redis_url

    async def refuse(_message: object) -> object:
        raise RuntimeError("channel test only sends")

    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as http:
        client = aioredis.Redis.from_url(redis_url(config), decode_responses=True)
        adapter = channel_class(name)(
            ChannelContext(LiveConfig(config), client, http, "clawctl", refuse)  # type: ignore[arg-type]
        )
        try:
            adapter.check_config()
            await adapter.start_sending()
            parts = split_text(text, adapter.max_text, length=adapter.text_length)
            for part in parts:
                await adapter.send(chat_id, part)
        except ChannelError as exc:
            raise CliError(f"{name}: {exc}") from None
        except SendError as exc:
            wait = f" (asked to retry after {exc.retry_after:g} s)" if exc.retry_after else ""
            raise CliError(f"{name} refused the message: {exc}{wait}") from None
        except httpx.HTTPError as exc:
            raise CliError(f"{name}: cannot reach the platform: {exc!r}") from None
        finally:
            await adapter.stop()
            await client.aclose()
    return f"sent to {name}:{chat_id} ({len(parts)} part(s))"


async def _through_fleet(config: Config, name: str, chat_id: str, text: str) -> str:
    import redis.asyncio as aioredis

    from claw_worker import constants as k
    from claw_worker.contract import OutboundMessage, new_message_id
    from claw_worker.redis_conn import redis_url

    client = aioredis.Redis.from_url(redis_url(config), decode_responses=True)
    try:
        holder = await client.get(k.connection_key(name, chat_id))
        if not holder:
            raise CliError(f"no ingress holds a {name} connection for {chat_id!r} right now")
        message = OutboundMessage(message_id=new_message_id(), channel=name, chat_id=chat_id,
                                  session_key=f"{name}:{chat_id}", text=text,
                                  metadata={"kind": "channel_test"})  # fmt: skip
        await client.xadd(k.OUTBOUND_STREAM, {"data": message.model_dump_json()})
        deadline = time.monotonic() + CONNECTION_WAIT_SEC
        while time.monotonic() < deadline:
            state = await client.hgetall(k.delivered_key(message.message_id))
            if state.get("done"):
                if state.get("error"):
                    raise CliError(f"{name} refused the message: {state['error']}")
                return f"sent to {name}:{chat_id} through ingress {holder}"
            await asyncio.sleep(0.2)
        raise CliError(f"not confirmed within {CONNECTION_WAIT_SEC:g} s (is the ingress running?)")
    finally:
        await client.aclose()
