"""``GET /ws`` end to end: the real ingress, real Celery workers, a real redis-server and the
scripted LLM, with the ``websockets`` client library as the browser or script."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from claw_worker import constants as k
from tests.fixtures.procs import free_port, wait_for

TOKEN = "ws-token-abcdefghijkl"
APP = "https://app.example.com"


def ws_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws{query}"


async def recv(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send(ws: ClientConnection, frame: Any) -> None:
    await ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))


async def closed_with(url: str, **kwargs: Any) -> int:
    """Connect and return the close code the server ends the connection with."""
    async with connect(url, **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws, timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def test_message_status_then_reply_ping_and_bad_frames(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_worker()
    fleet.start_ingress()

    async def scenario() -> None:
        async with connect(ws_url(fleet.port)) as ws:
            await send(ws, {"type": "message", "text": "hello ws"})
            status = await recv(ws)
            assert status["type"] == "status" and status["status"] == "queued"
            assert status["session"].startswith("ws:") and status["run_id"]
            reply = await recv(ws)
            assert reply == {"type": "reply", "message_id": status["message_id"],
                             "text": "echo: hello ws", "session": status["session"]}  # fmt: skip
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong"}
            for bad, says in [
                ("{not json", "JSON"),
                ({"type": "dance"}, "unknown frame type"),
                ([1, 2], "JSON object"),
                ({"type": "message", "text": "x" * 200_001}, "text"),
                ({"type": "message", "text": "hi", "session": "has space"}, "session"),
                (b"\x00binary", "text frames"),
            ]:
                await send(ws, bad)
                error = await recv(ws)
                assert error["type"] == "error" and says in error["error"], error
            # Still open; a named session, and a slash command answered through delivery.
            await send(ws, {"type": "message", "text": "in a named one", "session": "ws-named"})
            status = await recv(ws)
            assert status["session"] == "ws-named"
            assert (await recv(ws))["text"] == "echo: in a named one"
            await send(ws, {"type": "message", "text": "/help"})
            status = await recv(ws)
            assert status["status"] == "command"
            reply = await recv(ws)
            assert reply["message_id"] == status["message_id"] and "/status" in reply["text"]
        # A client that sends nothing but bad frames is closed.
        async with connect(ws_url(fleet.port)) as ws:
            for _ in range(19):
                await send(ws, "nonsense")
                assert (await recv(ws))["type"] == "error"
            await send(ws, "nonsense")
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    asyncio.run(scenario())


def test_token_and_origin_are_required(fleet_factory) -> None:
    fleet = fleet_factory(gateway__token=TOKEN, gateway__allowed_origins=[APP])
    fleet.start_worker()
    fleet.start_ingress()
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario() -> None:
        assert await closed_with(ws_url(fleet.port)) == 1008
        assert await closed_with(ws_url(fleet.port, "?token=nope")) == 1008
        wrong = {"Authorization": "Bearer nope"}
        assert await closed_with(ws_url(fleet.port), additional_headers=wrong) == 1008
        foreign = "https://evil.example.com"  # refused before the handshake is accepted
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(fleet.port), additional_headers=bearer, origin=foreign)
        assert refused.value.response.status_code == 403
        assert b"gateway.allowed_origins" in refused.value.response.body
        for kwargs in (
            {"uri": ws_url(fleet.port), "additional_headers": bearer},
            {"uri": ws_url(fleet.port, f"?token={TOKEN}"), "origin": APP},
        ):
            async with connect(**kwargs) as ws:
                await send(ws, {"type": "message", "text": "let in"})
                assert (await recv(ws))["status"] == "queued"
                assert (await recv(ws))["text"] == "echo: let in"

    asyncio.run(scenario())
    # Plain HTTP on /ws is behind the token as well.
    assert httpx.get(f"{fleet.base_url}/ws").status_code == 401
    assert TOKEN not in fleet.output("ingress")  # ?token= is masked in uvicorn's log line


def two_replicas(fleet: Any, client: redis.Redis) -> tuple[int, str]:
    """A worker, replica A (on the fleet's port, leading delivery) and replica B; returns
    B's port and its registry key."""
    fleet.start_worker()
    replica_a = fleet.start_ingress()
    host = socket.gethostname()
    key_a = f"ingress-{replica_a.pid}@{host}/{replica_a.pid}"
    wait_for(lambda: client.get(k.DELIVERY_LEADER) == key_a, timeout=30,
             what="replica A leading delivery")  # fmt: skip
    port_b = free_port()
    replica_b = fleet._spawn("ingress-b", [sys.executable, "-m", "claw_ingress", "--port",
                                           str(port_b)])  # fmt: skip
    wait_for(lambda: replica_b.poll() is not None
             or httpx.get(f"http://127.0.0.1:{port_b}/health").status_code == 200,
             timeout=30, what="replica B /health")  # fmt: skip
    assert replica_b.poll() is None, fleet.output("ingress-b")
    return port_b, f"ingress-{replica_b.pid}@{host}/{replica_b.pid}"


def test_replies_reach_a_client_on_the_other_replica(fleet_factory, redis_server) -> None:
    """Replica A delivers the outbound stream; the client is connected to replica B, so its
    replies are forwarded through B's inbox stream (claw:{outbound}:replica:<B>)."""
    fleet = fleet_factory()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    port_b, key_b = two_replicas(fleet, client)
    texts = [f"to replica b {n}" for n in range(5)]

    async def scenario() -> list[str]:
        async with connect(ws_url(port_b)) as ws:
            for text in texts:
                await send(ws, {"type": "message", "text": text})
            frames = [await recv(ws) for _ in range(2 * len(texts))]
        return [f["text"] for f in frames if f["type"] == "reply"]

    assert sorted(asyncio.run(scenario())) == sorted(f"echo: {t}" for t in texts)
    inbox = client.xinfo_stream(k.replica_inbox_key(key_b))
    assert inbox["entries-added"] >= 1, inbox  # read by A, forwarded to B
    assert client.get(k.DELIVERY_LEADER) != key_b
    client.close()


def test_a_reconnect_racing_the_old_connections_close_keeps_the_chats_mark(
    redis_server,
) -> None:
    """In process, on a real Redis: the old connection's close drops the chat's mark (GET,
    then DEL) while the new connection for the same chat sets it. The mark is the replica's,
    so without a second look the DEL removed the new connection's mark and its replies were
    dropped as having no connection (seen in CI: an autonomy test that reconnects at once)."""
    import redis.asyncio as aioredis

    from claw_ingress.channels.base import ChannelContext
    from claw_ingress.channels.websocket import WebSocketChannel, _Connection
    from claw_worker.config import Config
    from claw_worker.config.reload import LiveConfig

    async def scenario() -> list[bool]:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        ctx = ChannelContext(LiveConfig(Config()), client, None, "replica-1", None)  # type: ignore[arg-type]
        channel = WebSocketChannel(ctx)
        key = k.connection_key(channel.name, "chat-r")
        marked = []
        try:
            for _ in range(20):
                old, new = _Connection(None), _Connection(None)  # type: ignore[arg-type]
                await channel._hold(old, "chat-r")
                closing = asyncio.ensure_future(channel._forget(old))
                await asyncio.sleep(0)  # the close is under way: its GET is sent
                await channel._hold(new, "chat-r")
                await closing
                marked.append(await client.get(key) == "replica-1")
                await channel._forget(new)
        finally:
            await client.aclose()
        return marked

    assert all(asyncio.run(scenario()))


def test_a_reply_reaches_its_client_after_redis_lost_the_connections_mark(
    fleet_factory, redis_server
) -> None:
    """Redis back empty (no persistence, a flush; or down longer than a mark's 60 s): the
    marks saying which replica holds a connection were gone until the next renewal (20 s
    away), and every reply meanwhile was dropped as "for a connection that is closed".
    Now the delivering replica sends to a connection it holds itself (and marks it again),
    and waits for another replica's mark to come back before dropping a reply."""
    fleet = fleet_factory()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    port_b, _ = two_replicas(fleet, client)

    async def exchange(ws: ClientConnection, text: str) -> str:
        await send(ws, {"type": "message", "text": text})
        frames = [await recv(ws, timeout=45) for _ in range(2)]
        return next(f["text"] for f in frames if f["type"] == "reply")

    async def scenario() -> None:
        async with connect(ws_url(fleet.port)) as on_a, connect(ws_url(port_b)) as on_b:
            assert await exchange(on_a, "hello a") == "echo: hello a"
            assert await exchange(on_b, "hello b") == "echo: hello b"
            client.flushall()  # the marks (and the lease) go; the connections stay open
            assert await exchange(on_a, "after, on a") == "echo: after, on a"
            assert await exchange(on_b, "after, on b") == "echo: after, on b"

    asyncio.run(scenario())
    client.close()
