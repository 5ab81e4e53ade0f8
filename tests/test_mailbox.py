"""The mailbox protocol against a real redis-server: order, dedupe, in-flight recovery,
leases, the sweeper and reply dedupe (no Celery here; see test_fleet.py for that)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.contract import InboundMessage, MessageStatus, OutboundMessage
from claw_worker.session.enqueue import AsyncMailbox, Enqueued
from claw_worker.session.mailbox import LeaseLost, Mailbox
from claw_worker.session.sweeper import sweep_dirty_sessions
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer


def enqueue_each(server: RedisServer, messages: list[InboundMessage]) -> list[Enqueued]:
    async def run() -> list[Enqueued]:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        box = AsyncMailbox(client)
        try:
            return [await box.enqueue(m) for m in messages]
        finally:
            await client.aclose()

    return asyncio.run(run())


def enqueue_all(server: RedisServer, messages: list[InboundMessage]) -> list[bool]:
    return [e.stored for e in enqueue_each(server, messages)]


def msg(session: str, text: str, message_id: str | None = None) -> InboundMessage:
    extra = {"message_id": message_id} if message_id else {}
    return InboundMessage(channel="api", chat_id=session, session_key=session, text=text, **extra)


def test_take_is_fifo_and_dedupes_by_message_id(redis_server: RedisServer) -> None:
    messages = [msg("s1", f"m{i}") for i in range(5)]
    assert enqueue_all(redis_server, [*messages, messages[2]]) == [True] * 5 + [False]
    box = Mailbox(redis_server.client())
    assert box.acquire("s1", "tok")
    seen = []
    while (taken := box.take("s1", "tok")) is not None:
        seen.append(taken.message.text)
        box.complete(taken.message, "tok", MessageStatus.DONE, "ok")
    assert seen == [f"m{i}" for i in range(5)]


def test_each_message_gets_one_queued_run_and_a_duplicate_none(redis_server: RedisServer) -> None:
    first, second = msg("s2", "a"), msg("s2", "b")
    one, two, again = enqueue_each(redis_server, [first, second, first])
    client = redis_server.client()
    assert (again.stored, again.run_id) == (False, one.run_id), "a duplicate names the first run"
    assert client.zrange(k.RUNS_INDEX, 0, -1) == [one.run_id, two.run_id]  # no orphan run
    run = client.hgetall(k.run_key(one.run_id))
    assert (run["status"], run["message_id"], run["session_key"]) == (
        "queued",
        first.message_id,
        "s2",
    )
    assert client.get(k.latest_run_key("s2")) == two.run_id
    assert client.hget(k.message_key("s2", first.message_id), "run_id") == one.run_id


def test_inflight_item_is_taken_again_before_newer_ones(redis_server: RedisServer) -> None:
    enqueue_all(redis_server, [msg("s1", "first"), msg("s1", "second")])
    box = Mailbox(redis_server.client(), lease_ms=200)
    assert box.acquire("s1", "dead-worker")
    assert box.take("s1", "dead-worker").message.text == "first"
    # The holder dies: its lease expires and another worker takes over.
    assert not box.acquire("s1", "new-worker")
    wait_for(lambda: box.acquire("s1", "new-worker"), timeout=5, what="the lease to expire")
    taken = box.take("s1", "new-worker")
    assert (taken.message.text, taken.recovered) == ("first", True)
    with_lost = None
    try:
        box.take("s1", "dead-worker")
    except LeaseLost as exc:
        with_lost = exc
    assert with_lost is not None, "a holder whose lease expired must not take messages"


def test_release_reports_waiting_messages(redis_server: RedisServer) -> None:
    enqueue_all(redis_server, [msg("s1", "a"), msg("s1", "b")])
    box = Mailbox(redis_server.client())
    assert box.acquire("s1", "t")
    taken = box.take("s1", "t")
    box.complete(taken.message, "t", MessageStatus.DONE, "ok")
    assert box.release("s1", "t") == 1
    assert not redis_server.client().exists(k.lease_key("s1"))


def test_sweeper_wakes_idle_sessions_with_mail_and_forgets_clean_ones(
    redis_server: RedisServer,
) -> None:
    enqueue_all(redis_server, [msg("busy", "x"), msg("idle", "y"), msg("clean", "z")])
    box = Mailbox(redis_server.client())
    assert box.acquire("busy", "holder")
    assert box.acquire("clean", "t")
    taken = box.take("clean", "t")
    box.complete(taken.message, "t", MessageStatus.DONE, "ok")
    box.release("clean", "t")
    sent: list[str] = []
    assert sweep_dirty_sessions(box, lambda sk, _d: sent.append(sk), grace_sec=-1) == 1
    assert sent == ["idle"]
    dirty = set(redis_server.client().zrange(k.DIRTY_SESSIONS, 0, -1))
    assert dirty == {"busy", "idle"}


def test_reply_is_published_once_per_message(redis_server: RedisServer) -> None:
    box = Mailbox(redis_server.client())
    reply = OutboundMessage(
        message_id="m1", channel="api", chat_id="c", session_key="api:c", text="hi"
    )
    assert box.publish(reply) is True
    assert box.publish(reply) is False
    assert redis_server.client().xlen(k.OUTBOUND_STREAM) == 1
