"""A session's mailbox holding an entry that is not a message a worker can read."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.contract import InboundMessage
from claw_worker.session.enqueue import AsyncMailbox
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer

SESSION = "api:damaged"


def enqueue(server: RedisServer, message: InboundMessage) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            await AsyncMailbox(client).enqueue(message)
        finally:
            await client.aclose()

    asyncio.run(run())


def _newer(server: RedisServer) -> str:
    # What a newer ingress could store during a rolling upgrade (with the message's record):
    # a field this worker's contract does not know (it forbids extra fields).
    server.client().hset(k.message_key(SESSION, "m-newer"), mapping={"status": "queued"})
    fields = {"message_id": "m-newer", "channel": "api", "chat_id": "damaged", "text": "hi"}
    return json.dumps({**fields, "session_key": SESSION, "priority": 1})


BAD_ENTRIES = {"not JSON": lambda _: "{not json", "from a newer version": _newer}


@pytest.mark.parametrize("make", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_an_unreadable_mailbox_entry_is_set_aside_and_the_session_goes_on(
    fleet_factory, redis_server: RedisServer, make
) -> None:
    fleet = fleet_factory()
    client = redis_server.client()
    bad = make(redis_server)
    client.rpush(k.mailbox_key(SESSION), bad)
    good = InboundMessage(channel="api", chat_id="damaged", session_key=SESSION, text="hello")
    enqueue(redis_server, good)
    worker = fleet.start_worker(concurrency=2)

    # Before, the drain raised on the entry, left it in flight, sent itself again at once
    # and raised again: the session never answered, and the worker spun on it.
    def done() -> bool:
        return client.hget(k.message_key(SESSION, good.message_id), "status") == "done"

    wait_for(done, timeout=30, interval=0.2, what="the message after the bad entry to be done")
    assert client.lrange(k.dead_letter_key(SESSION), 0, -1) == [bad]
    assert client.llen(k.inflight_key(SESSION)) == 0
    assert client.ttl(k.dead_letter_key(SESSION)) > 0
    wait_for(
        lambda: "unreadable mailbox entry set aside" in fleet.output("w1"),
        timeout=10,
        what="the error logged",
    )
    assert worker.poll() is None
    if "m-newer" in bad:  # its record says why, instead of "queued" for good
        record = client.hgetall(k.message_key(SESSION, "m-newer"))
        assert record["status"] == "failed"
        assert "cannot read the stored message (priority: Extra inputs" in record["error"]
