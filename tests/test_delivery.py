"""Delivery of the outbound stream and the access policy, against a real redis-server.

The adapter here is a stand-in for a platform (it records what it was asked to send and
can refuse like a platform does); the delivery loop, the consumer group, the marks, the
splitting and the access policy are the real ones. End-to-end delivery through each real
adapter and its platform's wire format is in tests/test_channel_*.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import httpx
import pytest
import redis.asyncio as aioredis

from claw_ingress import access
from claw_ingress.channels.base import Channel, ChannelContext, SendError
from claw_ingress.delivery import Delivery
from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.config.channels import ChannelConfig
from claw_worker.config.reload import LiveConfig
from claw_worker.contract import OutboundMessage, new_message_id
from tests.fixtures.redis_server import RedisServer


class RecordingChannel(Channel):
    """Stands in for a platform: records sends; ``refusals`` are raised first, in order."""

    name: ClassVar[str] = "telegram"  # a real config section, for rate_per_sec and burst
    max_text: ClassVar[int] = 100

    def __init__(self, ctx: ChannelContext, *, bound: bool = False) -> None:
        super().__init__(ctx)
        self.sent: list[tuple[str, str, float]] = []
        self.refusals: list[Exception] = []
        self.connection_bound = bound  # type: ignore[misc]

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        if self.refusals:
            raise self.refusals.pop(0)
        self.sent.append((chat_id, text, time.monotonic()))


def run(redis_server: RedisServer, body: Callable[[aioredis.Redis], Awaitable[None]]) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await asyncio.wait_for(body(client), timeout=60)
        finally:
            await client.aclose()

    asyncio.run(main())


def context(client: aioredis.Redis, replica: str, **telegram: Any) -> ChannelContext:
    config = Config.model_validate(
        {"channels": {"telegram": {"rate_per_sec": 100.0, "burst": 100, **telegram}}}
    )

    async def accept(_message: Any) -> Any:
        raise AssertionError("not used here")

    return ChannelContext(LiveConfig(config), client, httpx.AsyncClient(), replica, accept)


async def publish(client: aioredis.Redis, text: str, chat_id: str = "42") -> str:
    message = OutboundMessage(message_id=new_message_id(), channel="telegram",
                              chat_id=chat_id, session_key=f"telegram:{chat_id}", text=text)  # fmt: skip
    await client.xadd(k.OUTBOUND_STREAM, {"data": message.model_dump_json()})
    return message.message_id


async def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` (sync, or returning an awaitable) until it gives something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {check}")


def replica(client: aioredis.Redis, channel: Channel, name: str, **kw: Any) -> Delivery:
    return Delivery(client, lambda n: channel if n == channel.name else None, name,
                    wanted=lambda n: n == channel.name, **kw)  # fmt: skip


def test_long_text_goes_out_in_order_in_parts_with_code_fences_kept(redis_server) -> None:
    async def body(client: aioredis.Redis) -> None:
        channel = RecordingChannel(context(client, "r1"))
        delivery = replica(client, channel, "r1")
        await delivery.start()
        text = "Here:\n\n```py\n" + "\n".join(f"x{i} = {i}" for i in range(30)) + "\n```\nend"
        mid = await publish(client, text)
        await until(lambda: _done(client, mid))
        parts = [t for _, t, _ in channel.sent]
        assert all(len(p) <= RecordingChannel.max_text for p in parts)
        assert all(p.count("```") % 2 == 0 for p in parts), parts  # each renders as code
        assert "".join(parts).replace("```\n```py\n", "").count("x29 = 29") == 1
        # Acknowledged once marked done: waited for, as the two are separate Redis calls.
        pending = await until(lambda: _acknowledged(client))
        assert pending == {"pending": 0, "min": None, "max": None, "consumers": []}
        await delivery.stop()

    run(redis_server, body)


def test_a_429_is_waited_out_and_the_message_sent_once(redis_server) -> None:
    async def body(client: aioredis.Redis) -> None:
        channel = RecordingChannel(context(client, "r1"))
        channel.refusals.append(SendError("Too Many Requests", retry_after=0.6))
        delivery = replica(client, channel, "r1")
        await delivery.start()
        started = time.monotonic()
        await publish(client, "hello")
        await until(lambda: channel.sent)
        await asyncio.sleep(0.3)  # would a second copy follow? (nothing should)
        assert [t for _, t, _ in channel.sent] == ["hello"]
        assert channel.sent[0][2] - started >= 0.55
        await delivery.stop()

    run(redis_server, body)


def test_a_permanent_refusal_is_not_retried(redis_server) -> None:
    async def body(client: aioredis.Redis) -> None:
        channel = RecordingChannel(context(client, "r1"))
        channel.refusals.append(SendError("chat not found", permanent=True))
        delivery = replica(client, channel, "r1")
        await delivery.start()
        mid = await publish(client, "to nowhere")
        state = await until(lambda: _done(client, mid))
        assert state["error"] == "refused" and channel.sent == []
        await delivery.stop()

    run(redis_server, body)


class GatedChannel(RecordingChannel):
    """Its sends wait until ``gate`` is set."""

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.gate, self.waiting = asyncio.Event(), False

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        self.waiting = True
        await self.gate.wait()
        await super().send(chat_id, text, reply_to=reply_to)


def test_a_delivery_that_meets_a_redis_outage_is_finished_when_redis_is_back(
    redis_server,
) -> None:
    """Redis went away while a reply was being sent: before, the entry was left for the
    reclaim a minute later (after Redis was back), and its part, which Redis could not
    count, was sent again. Now the delivery waits Redis out and finishes, once."""

    async def body(client: aioredis.Redis) -> None:
        channel = GatedChannel(context(client, "r1"))
        delivery = replica(client, channel, "r1")  # the reclaim as deployed: after 60 s
        await delivery.start()
        await until(lambda: delivery.leading)
        mid = await publish(client, "said as Redis went away")
        await until(lambda: channel.waiting)
        await asyncio.to_thread(redis_server.stop)
        channel.gate.set()  # the platform took it; counting it meets the outage
        await until(lambda: channel.sent)
        await asyncio.to_thread(redis_server.start)
        r = redis_server.client()  # this test's pooled connections died with the server
        await until(lambda: r.hget(k.delivered_key(mid), "done"), timeout=20)
        await until(lambda: r.xpending(k.OUTBOUND_STREAM, k.OUTBOUND_GROUP)["pending"] == 0)
        assert [t for _, t, _ in channel.sent] == ["said as Redis went away"]
        await delivery.stop()

    run(redis_server, body)


def test_a_reply_for_a_connection_without_a_mark_waits_for_the_mark_to_come_back(
    redis_server,
) -> None:
    """Redis lost the mark of a chat whose connection another replica holds (back empty, or
    away past the mark's TTL): the reply was dropped as for a closed connection. Now it is
    routed again every 2 s until the holder renews its mark (within 20 s), then forwarded."""

    async def body(client: aioredis.Redis) -> None:
        channel = RecordingChannel(context(client, "r1"), bound=True)  # holds no chat here
        delivery = replica(client, channel, "r1")
        await delivery.start()
        await until(lambda: delivery.leading)
        await publish(client, "for a chat held by r2", chat_id="77")
        await until(lambda: delivery._unmarked)  # seen without a mark: not dropped
        await client.set(k.connection_key("telegram", "77"), "r2", ex=60)  # r2 renews it
        forwarded = await until(lambda: client.xrange(k.replica_inbox_key("r2")), timeout=10)
        assert json.loads(forwarded[0][1]["data"])["text"] == "for a chat held by r2"
        await until(lambda: _acknowledged(client))
        assert channel.sent == []
        await delivery.stop()

    run(redis_server, body)


async def _done(client: aioredis.Redis, mid: str) -> dict[str, str] | None:
    state = await client.hgetall(k.delivered_key(mid))
    return state if state.get("done") else None


async def _acknowledged(client: aioredis.Redis) -> dict[str, Any] | None:
    pending = await client.xpending(k.OUTBOUND_STREAM, k.OUTBOUND_GROUP)
    return pending if pending["pending"] == 0 else None


def test_two_replicas_send_each_entry_once_and_in_order(redis_server) -> None:
    async def body(client: aioredis.Redis) -> None:
        a = RecordingChannel(context(client, "a"))
        b = RecordingChannel(context(client, "b"))
        replicas = [replica(client, a, "a"), replica(client, b, "b")]
        for r in replicas:
            await r.start()
        ids = [await publish(client, f"m{i}", chat_id=str(i % 5)) for i in range(60)]
        await until(lambda: len(a.sent) + len(b.sent) >= 60)
        await asyncio.sleep(0.3)
        texts = sorted(t for _, t, _ in a.sent + b.sent)
        assert texts == sorted(f"m{i}" for i in range(60))
        for chat in map(str, range(5)):  # each chat's messages in the order published
            sent = [t for c, t, _ in sorted(a.sent + b.sent, key=lambda s: s[2]) if c == chat]
            assert sent == [f"m{i}" for i in range(60) if str(i % 5) == chat]
        assert all([await client.hget(k.delivered_key(mid), "done") for mid in ids])
        for r in replicas:
            await r.stop()

    run(redis_server, body)


def test_a_dead_replicas_entry_is_claimed_and_resumed_after_its_last_part(redis_server) -> None:
    async def body(client: aioredis.Redis) -> None:
        channel = RecordingChannel(context(client, "dead"))
        dead = replica(client, channel, "dead")
        await dead.start()
        await dead.stop()  # made the group; then "dies" without reading anything
        mid = await publish(client, "one two three " * 20)  # ~280 chars: 3 parts
        # The dead replica had read it and sent the first part before dying:
        read = await client.xreadgroup(k.OUTBOUND_GROUP, "dead", {k.OUTBOUND_STREAM: ">"})
        assert read and read[0][1]
        await client.hincrby(k.delivered_key(mid), "parts", 1)

        heir_channel = RecordingChannel(context(client, "heir"))
        heir = replica(client, heir_channel, "heir", claim_idle_ms=300, claim_every_sec=0.2)
        await heir.start()
        state = await until(lambda: _done(client, mid))
        assert state["parts"] == "3"
        assert len(heir_channel.sent) == 2  # parts 2 and 3 only: part 1 is never sent again
        await heir.stop()

    run(redis_server, body)


def test_a_connection_bound_reply_goes_to_the_replica_holding_the_connection(
    redis_server,
) -> None:
    async def body(client: aioredis.Redis) -> None:
        here = RecordingChannel(context(client, "here"), bound=True)
        there = RecordingChannel(context(client, "there"), bound=True)
        await there.ctx.hold_connection("telegram", "77")
        replicas = [replica(client, here, "here"), replica(client, there, "there")]
        for r in replicas:
            await r.start()
        for i in range(10):
            await publish(client, f"r{i}", chat_id="77")
        await until(lambda: len(there.sent) >= 10)
        assert here.sent == []
        assert [t for _, t, _ in there.sent] == [f"r{i}" for i in range(10)]
        await there.ctx.drop_connection("telegram", "77")
        assert not await client.exists(k.connection_key("telegram", "77"))
        for r in replicas:
            await r.stop()

    run(redis_server, body)


@pytest.mark.parametrize("policy", ["open", "allowlist", "pairing"])
def test_access_policy(redis_server, policy: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        cfg = ChannelConfig(dm_policy=policy, allow_from=["friend"])
        assert (await access.check(client, "telegram", cfg, "friend", "1")).allowed
        stranger = await access.check(client, "telegram", cfg, "stranger", "2")
        assert stranger.allowed is (policy == "open")
        if policy != "pairing":
            assert not stranger.pairing_code
            return
        code = stranger.pairing_code
        assert len(code) == access.CODE_LENGTH
        again = await access.check(client, "telegram", cfg, "stranger", "2")
        assert not again.allowed and again.pairing_code == ""  # one code, sent once
        await client.sadd(k.allowed_senders_key("telegram"), "stranger")  # what approve does
        assert (await access.check(client, "telegram", cfg, "stranger", "2")).allowed
        assert not (await access.check(client, "discord", cfg, "stranger", "2")).allowed

    run(redis_server, body)
