"""The ingress's enqueue side on a real Redis: one ENQUEUE call writes everything a message
needs (and nothing for a duplicate), the script is loaded again after a flush, and the
Coalescer gives each of many concurrent callers its own reply or error, within its deadline,
in the bytes redis-py would send."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from claw_worker import constants as k
from claw_worker.contract import InboundMessage
from claw_worker.session.enqueue import AsyncMailbox, Coalescer, HiredisPacking
from tests.fixtures.procs import free_port
from tests.fixtures.redis_server import RedisServer


def run(redis_server: RedisServer, scenario: Any) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            return await scenario(AsyncMailbox(client, run_max=3))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_one_call_stores_indexes_records_the_run_and_a_duplicate_writes_nothing(
    redis_server: RedisServer,
) -> None:
    message = InboundMessage(channel="api", chat_id="s1", text="hello")

    async def scenario(box: AsyncMailbox) -> Any:
        first = await box.enqueue(message)
        again = await box.enqueue(message)
        others = [await box.enqueue(InboundMessage(channel="api", chat_id="s1", text=str(n)))
                  for n in range(4)]  # fmt: skip
        return first, again, others, await box.get_message(message.message_id)

    first, again, others, record = run(redis_server, scenario)
    client = redis_server.client()
    assert first.stored and not again.stored and again.run_id == first.run_id
    assert record is not None and record["status"] == "queued"
    assert record["run_id"] == first.run_id and record["session_key"] == "api:s1"
    assert client.llen(k.mailbox_key("api:s1")) == 5  # the duplicate was not pushed
    assert client.get(k.message_index_key(message.message_id)) == "api:s1"
    assert client.zscore(k.DIRTY_SESSIONS, "api:s1") is not None
    run_record = client.hgetall(k.run_key(first.run_id))
    assert run_record["status"] == "queued" and run_record["message_id"] == message.message_id
    # The runs index keeps the newest run_max (3); no run was recorded for the duplicate.
    assert client.zrange(k.RUNS_INDEX, 0, -1) == [o.run_id for o in others[-3:]]
    assert client.llen(k.QUEUE_SESSIONS) == 1  # one drain for the session


def test_the_script_is_loaded_again_after_a_flush(redis_server: RedisServer) -> None:
    async def scenario(box: AsyncMailbox) -> Any:
        await box.enqueue(InboundMessage(channel="api", chat_id="s2", text="a"))
        await box.redis.script_flush()
        return await box.enqueue(InboundMessage(channel="api", chat_id="s2", text="b"))

    assert run(redis_server, scenario).stored
    assert redis_server.client().llen(k.mailbox_key("api:s2")) == 2


def test_concurrent_callers_each_get_their_own_reply_or_error(redis_server: RedisServer) -> None:
    async def scenario(box: AsyncMailbox) -> Any:
        await box.commands.execute("SET", "text", "not a number")

        async def call(n: int) -> Any:
            if n % 10 == 0:  # fails on its own: the others in its pipeline still succeed
                return await box.commands.execute("INCR", "text")
            await box.commands.execute("SET", f"key:{n}", n)
            return await box.commands.execute("GET", f"key:{n}")

        return await asyncio.gather(*(call(n) for n in range(100)), return_exceptions=True)

    results = run(redis_server, scenario)
    for n, result in enumerate(results):
        if n % 10 == 0:
            assert isinstance(result, redis.ResponseError), result
        else:
            assert result == str(n)


def test_a_lost_connection_fails_every_caller_of_the_batch() -> None:
    async def scenario() -> Any:
        # Refused at once; the generous timeout is for a loaded machine (CI saw 1 s run out).
        nowhere = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=10)
        try:
            commands = Coalescer(nowhere)
            return await asyncio.gather(*(commands.execute("PING") for _ in range(5)),
                                        return_exceptions=True)  # fmt: skip
        finally:
            await nowhere.aclose()

    results = asyncio.run(scenario())
    assert all(isinstance(r, redis.ConnectionError) for r in results), results


def test_a_batch_without_a_reply_fails_its_callers_at_its_deadline() -> None:
    """A server that accepts and never answers (a hung Redis): every caller of the batch
    hears redis' TimeoutError at the batch's deadline, not never."""

    async def scenario() -> Any:
        held: list[asyncio.StreamWriter] = []

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # reads nothing, answers nothing

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = aioredis.Redis(port=port, socket_timeout=0.5)
        commands = Coalescer(client)
        try:
            calls = [commands.execute("PING") for _ in range(3)]
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        finally:
            await commands.aclose()
            await client.aclose()
            for writer in held:
                writer.close()
            server.close()

    results = asyncio.run(scenario())
    assert all(isinstance(r, redis.TimeoutError) for r in results), results


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["EVALSHA", "GET", "SCRIPT LOAD", "CONFIG GET", b"HSET", b"SCRIPT FLUSH"]),
    st.lists(st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=False))),
)
def test_hiredis_packing_sends_the_bytes_redis_py_would(name: Any, args: list[Any]) -> None:
    plain = aioredis.Connection()
    packed = type("Packed", (HiredisPacking, aioredis.Connection), {})()
    assert b"".join(packed.pack_command(name, *args)) == b"".join(plain.pack_command(name, *args))


def test_hiredis_packing_refuses_what_redis_py_refuses() -> None:
    packed = type("Packed", (HiredisPacking, aioredis.Connection), {})()
    for bad in (None, [1], {"a": 1}):
        try:
            packed.pack_command("SET", "k", bad)
        except redis.DataError:
            continue
        raise AssertionError(f"{bad!r} was packed")
