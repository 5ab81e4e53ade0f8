"""The ingress's outbound reader on a real Redis: it follows the stream from its tail by
entry id (an entry published before it started is not handed over; every one after is),
and it says when a waiter may have missed its reply (before it follows the stream, after a
read error), so that only then a short wait reads the message record."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from claw_ingress.outbound import OutboundReader
from claw_worker import constants as k
from claw_worker.contract import OutboundMessage
from tests.fixtures.redis_server import RedisServer


def reply(message_id: str) -> OutboundMessage:
    return OutboundMessage(message_id=message_id, channel="api", chat_id="c", session_key="api:c",
                           text=f"answer to {message_id}")  # fmt: skip


async def publish(client: aioredis.Redis, message_id: str) -> None:
    await client.xadd(k.OUTBOUND_STREAM, {"data": reply(message_id).model_dump_json()})


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_follows_from_the_tail_and_says_when_a_reply_may_have_been_missed(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        reader = OutboundReader(client)
        try:
            await publish(client, "old")
            early = reader.expect("early")
            assert reader.may_have_missed("early")  # not reading yet
            old = reader.expect("old")
            reader.start()
            await until(lambda: reader._following, "the reader to follow the stream")
            assert reader.may_have_missed("early")  # expected before the reader took its tail
            now = reader.expect("now")
            assert not reader.may_have_missed("now")
            for n in range(50):  # back to back and spaced: every one handed over
                await publish(client, f"m{n}")
                if n % 10 == 0:
                    await asyncio.sleep(0.05)
            waiters = [reader.expect(f"late{n}") for n in range(3)]
            await publish(client, "now")
            for n in range(3):
                await publish(client, f"late{n}")
            assert (await asyncio.wait_for(now, 5)).text == "answer to now"
            assert [(await asyncio.wait_for(w, 5)).text for w in waiters] == [
                f"answer to late{n}" for n in range(3)
            ]
            assert not old.done()  # published before the reader started: not replayed
            # A read error may have cost entries: a waiter from before it hears so.
            before = reader.expect("before-error")
            killer = aioredis.Redis.from_url(redis_server.url)
            try:
                await killer.client_kill_filter(_type="normal", skipme=True)
            finally:
                await killer.aclose()
            await until(lambda: reader.may_have_missed("before-error"), "the gap to show")
            reader.forget("early", early)
            reader.forget("old", old)
            reader.forget("before-error", before)
        finally:
            await reader.stop()
            await client.aclose()

    asyncio.run(scenario())
