"""The ``message`` tool offers only channels that can deliver, and a repeated run of the
same message does not post the same text twice: direct tool calls on a real Redis with the
real mailbox, and a retried run on a real fleet."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus, OutboundMessage
from claw_worker.session.enqueue import AsyncMailbox
from claw_worker.session.mailbox import Mailbox
from claw_worker.tools import ToolContext, default_tools
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer, error, text, tool_call

CHANNELS = {
    "telegram": {"enabled": True, "token": "123:abc"},  # can deliver
    "whatsapp": {"enabled": True, "bridge_url": "ws://bridge.local"},  # can deliver
    "discord": {"enabled": True},  # no token
    "feishu": {"app_id": "a", "app_secret": "s"},  # credentials, but not enabled
    "dingtalk": {"enabled": True, "client_id": "c"},  # no client_secret
}


def channels_config(channels: dict[str, Any] = CHANNELS) -> Config:
    return Config.model_validate({"channels": channels})


def message_schema(config: Config) -> dict[str, Any]:
    [schema] = [s for s in default_tools(config).schemas() if s["function"]["name"] == "message"]
    return schema["function"]


def posts(client: Any) -> list[OutboundMessage]:
    entries = client.xrange(k.OUTBOUND_STREAM)
    sent = [OutboundMessage.model_validate_json(fields["data"]) for _id, fields in entries]
    return [m for m in sent if m.metadata.get("kind") == "tool_message"]


def test_only_channels_that_can_deliver_are_offered(
    redis_server: RedisServer, workspace: Path
) -> None:
    config = channels_config()
    schema = message_schema(config)
    assert schema["parameters"]["properties"]["channel"]["enum"] == ["telegram", "whatsapp"]
    assert "Channels that can deliver: telegram, whatsapp." in schema["description"]
    client = redis_server.client()
    ctx = ToolContext(workspace, "telegram:7", config, redis=client)
    tools = default_tools(config)

    sent = tools.run(
        "message", {"channel": "telegram", "chat_id": "99", "text": "deploy done"}, ctx
    )
    assert sent == "Message sent to telegram:99 (11 chars)"
    [post] = posts(client)
    assert (post.channel, post.chat_id, post.text) == ("telegram", "99", "deploy done")
    assert post.metadata == {"kind": "tool_message", "from_session": "telegram:7"}
    cased = {"channel": " Telegram", "chat_id": "99", "text": "x"}
    assert tools.run("message", cased, ctx) == "Message sent to telegram:99 (1 chars)"

    def refused(channel: str) -> str:
        result = tools.run("message", {"channel": channel, "chat_id": "1", "text": "hi"}, ctx)
        assert result.startswith("Error: "), result
        assert result.endswith("Channels that can deliver: telegram, whatsapp") or (
            result.endswith("channels that can deliver: telegram, whatsapp")
        ), result
        return result

    assert "cannot receive messages outside a reply" in refused("api")
    assert "put it in your answer" in refused("api")
    for channel in ("discord", "feishu", "dingtalk", "qq"):
        assert f"channel {channel!r} cannot deliver messages" in refused(channel)
        assert f"(channels.{channel})" in refused(channel)
    assert refused("pigeon").startswith("Error: unknown channel 'pigeon'")
    missing = tools.run("message", {"channel": "telegram", "chat_id": "1"}, ctx)
    assert missing == "Error: invalid arguments for message: text: Field required"
    assert len(posts(client)) == 2  # none of the refused ones reached the stream
    no_fleet = ToolContext(workspace, "telegram:7", config)  # outside a worker: no Redis
    result = tools.run("message", {"channel": "telegram", "chat_id": "1", "text": "hi"}, no_fleet)
    assert result.startswith("Error: message tool needs the fleet")


def test_without_a_deliverable_channel_the_tool_says_so(
    redis_server: RedisServer, workspace: Path
) -> None:
    config = Config()
    schema = message_schema(config)
    assert "enum" not in schema["parameters"]["properties"]["channel"]
    assert "No channel can deliver now" in schema["description"]
    ctx = ToolContext(workspace, "api:s", config, redis=redis_server.client())
    for channel in ("telegram", "api"):
        result = default_tools(config).run(
            "message", {"channel": channel, "chat_id": "1", "text": "hi"}, ctx
        )
        assert result.startswith("Error: ") and result.endswith("can deliver: none"), result
    assert posts(redis_server.client()) == []


def _in_flight(url: str, mailbox: Mailbox, session: str, text_: str) -> InboundMessage:
    """Store a message as the ingress does and take it as a draining worker does."""
    message = InboundMessage(channel="telegram", chat_id="7", session_key=session, text=text_)

    async def store() -> None:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            assert (await AsyncMailbox(client).enqueue(message)).stored
        finally:
            await client.aclose()

    asyncio.run(store())
    taken = mailbox.take(session, "token")
    assert taken is not None and taken.message.message_id == message.message_id
    return message


def test_a_repeated_run_does_not_post_the_same_message_twice(
    redis_server: RedisServer, workspace: Path
) -> None:
    client = redis_server.client()
    config = channels_config()
    tools = default_tools(config)
    mailbox = Mailbox(client)
    session = "telegram:7"
    assert mailbox.acquire(session, "token")
    first = _in_flight(redis_server.url, mailbox, session, "tell 99 the deploy is done")
    ctx = ToolContext(workspace, session, config, redis=client, message_id=first.message_id)
    args = {"channel": "telegram", "chat_id": "99", "text": "deploy done"}

    assert tools.run("message", args, ctx).startswith("Message sent")
    # The run fails after the post and is run again (the same message in flight):
    again = tools.run("message", args, ctx)
    assert again.startswith("Message to telegram:99 was already sent for this request")
    assert [p.text for p in posts(client)] == ["deploy done"]
    # Another text in the same run is another post.
    other = {**args, "text": "and the tests pass"}
    assert tools.run("message", other, ctx).startswith("Message sent")
    assert len(posts(client)) == 2

    # The next message of the session may send the same text again.
    mailbox.complete(first, "token", MessageStatus.DONE, "ok")
    second = _in_flight(redis_server.url, mailbox, session, "tell 99 again")
    ctx = ToolContext(workspace, session, config, redis=client, message_id=second.message_id)
    assert tools.run("message", args, ctx).startswith("Message sent")
    assert [p.text for p in posts(client)] == ["deploy done", "and the tests pass", "deploy done"]


def test_a_run_retried_after_a_transient_error_posts_once(
    fleet_factory: Any, llm_server: LLMServer, redis_server: RedisServer
) -> None:
    args = {"channel": "telegram", "chat_id": "99", "text": "build is green"}
    llm_server.push(
        tool_call("message", args),
        error(503, {"error": {"message": "upstream overloaded"}}),  # the run fails: retried
        tool_call("message", args),  # the retry asks for the same post
        text("told them"),
        when="NOTIFY",
    )
    fleet = fleet_factory(channels__telegram={"enabled": True, "token": "123:abc"})
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    with fleet.client() as http:
        resp = http.post("/api/message", json={"text": "NOTIFY 99", "session": "api:notify"})
        assert resp.status_code == 202, resp.text
        message_id = resp.json()["message_id"]

        def done() -> dict[str, str] | None:
            record = r.hgetall(k.message_key("api:notify", message_id))
            return record if record.get("status") in ("done", "failed") else None

        record = wait_for(done, timeout=40, what="the notify message")

    assert record["status"] == "done" and record["reply"] == "told them"
    assert record["attempts"] == "2"
    assert [(p.channel, p.chat_id, p.text) for p in posts(r)] == [
        ("telegram", "99", "build is green")
    ]
    # The retried run was told the post was already made.
    results = [m["content"] for m in llm_server.requests[-1]["messages"] if m["role"] == "tool"]
    assert results and results[-1].startswith("Message to telegram:99 was already sent")
