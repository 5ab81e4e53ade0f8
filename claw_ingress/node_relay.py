"""The relay's ingress side: nodes that cannot be called (behind NAT, on a phone) keep a
WebSocket to the gateway, ``GET /nodes/connect``, and workers reach them through it.

The node connects with ``Authorization: Bearer <gateway.token>`` (when set), ``X-Node-Id``
and ``X-Node-Token`` (the token it registered with: only the registered node may take its
id's connection). The replica then marks ``claw:conn:nodes:<id>`` as its own (renewed every
third of ``CONN_TTL_SEC``; a newer connection on another replica takes the mark, and this
one is closed at the next renewal). While it holds any node, the replica pops the requests
workers put on ``claw:nodes:relay:<replica>`` (``claw_worker/nodes/relay.py``), drops those
nobody waits for any more, sends each down its node's WebSocket with the node's token
(``{"type": "request", "id", "path", "token", "body"}``), and pushes the node's answer
(``{"type": "response", "id", "body": <envelope>}``) on ``claw:nodes:reply:<id>``. A
connection whose node has registered again with another token is closed (at the next
renewal or request, whichever comes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from claw_ingress.bodies import BodyError, loads_bounded
from claw_ingress.cancel import stop_if_cancelled
from claw_ingress.channels.websocket import refusal
from claw_worker import constants as k
from claw_worker.config.reload import LiveConfig
from claw_worker.process import identity

log = structlog.get_logger(__name__)

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CONN_TTL_SEC = 30
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
REPLY_TTL_SEC = 60
POP_WAIT_SEC = 1
SEND_TIMEOUT_SEC = 10.0
MAX_BAD_FRAMES = 20

# KEYS: the connection mark. ARGV: this replica, TTL. 1: renewed; 0: another replica holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _envelope(code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error, "payload": None}


def _token(record: str | None) -> str | None:
    """The node's own token from its registry record (None: no readable record)."""
    try:
        return str(json.loads(record)["token"]) if record else None
    except (ValueError, TypeError, KeyError):
        return None


class _NodeConnection:
    def __init__(self, websocket: WebSocket, node_id: str, token: str) -> None:
        self.websocket = websocket
        self.node_id = node_id
        self.token = token  # the node's token it connected with
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await asyncio.wait_for(self.websocket.send_json(frame), SEND_TIMEOUT_SEC)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)

    def fail_pending(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_result(_envelope("transport_error",
                                            f"node {self.node_id}'s relay connection closed"))  # fmt: skip


class NodeRelay:
    def __init__(self, live: LiveConfig) -> None:
        self.live = live
        self._conns: dict[str, _NodeConnection] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._forwarding: set[asyncio.Task[None]] = set()

    @property
    def replica(self) -> str:
        return identity().key

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        redis: aioredis.Redis = websocket.app.state.redis
        node_id = websocket.headers.get("x-node-id", "")
        token = websocket.headers.get("x-node-token", "")
        try:
            reason = refusal(websocket, self.live.config.gateway) or await self._check(
                redis, node_id, token
            )
        except RedisError as exc:
            log.warning("redis unavailable", error=str(exc))
            reason = "node registry unavailable, retry later"
        if reason is not None:
            log.info("node connection refused", node=node_id[:64], error=reason)
            await websocket.close(POLICY_VIOLATION, reason)
            return
        conn = _NodeConnection(websocket, node_id, token)
        old = self._conns.get(node_id)
        if old is not None:
            await old.close(GOING_AWAY, "replaced by a newer connection")
        self._conns[node_id] = conn
        self._start(redis)
        log.info("node connected", node=node_id, replica=self.replica)
        try:
            await redis.set(k.node_connection_key(node_id), self.replica, ex=CONN_TTL_SEC)
            await self._read(conn)
        except (WebSocketDisconnect, OSError, TimeoutError, RedisError):
            pass
        finally:
            await self._forget(redis, conn)

    async def _check(self, redis: aioredis.Redis, node_id: str, token: str) -> str | None:
        if not re.match(NODE_ID_PATTERN, node_id):
            return "X-Node-Id must name a registered node"
        registered = _token(await redis.hget(k.NODES, node_id))
        if registered is None:
            return "unknown node: register first (POST /nodes/register)"
        if not hmac.compare_digest(token.encode(), registered.encode()):
            return "X-Node-Token is not the token this node registered with"
        return None

    async def _closed_if_stale(self, redis: aioredis.Redis, conn: _NodeConnection) -> bool:
        """Close ``conn`` (and say True) if its node is no longer registered with the token
        it connected with. A node that registered again with a new token (its old one
        leaked, or another process took its id) must not keep the old connection: it would
        be sent requests, and the new token in each."""
        reason = await self._check(redis, conn.node_id, conn.token)
        if reason is not None:
            log.info("node connection closed", node=conn.node_id, error=reason)
            await conn.close(POLICY_VIOLATION, reason)
        return reason is not None

    async def _read(self, conn: _NodeConnection) -> None:
        bad = 0
        while True:
            event = await conn.websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            try:
                frame = loads_bounded((event.get("text") or "").encode("utf-8", "surrogatepass"))
            except BodyError:
                frame = None
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "response" and isinstance(frame, dict):
                future = conn.pending.get(str(frame.get("id")))
                if future is not None and not future.done():
                    future.set_result(frame.get("body"))
                bad = 0
            elif kind == "ping":
                await conn.send({"type": "pong"})
                bad = 0
            else:
                bad += 1
                if bad >= MAX_BAD_FRAMES:
                    await conn.close(POLICY_VIOLATION, "too many bad frames")
                    return

    async def _forget(self, redis: aioredis.Redis, conn: _NodeConnection) -> None:
        conn.fail_pending()
        if self._conns.get(conn.node_id) is not conn:
            return  # replaced by a newer connection here: the mark is that one's
        del self._conns[conn.node_id]
        log.info("node disconnected", node=conn.node_id)
        with contextlib.suppress(RedisError):
            await redis.eval(_DROP, 1, k.node_connection_key(conn.node_id), self.replica)
        if not self._conns:
            await self._stop()

    # -- the replica's tasks, while it holds a node --------------------------------------------

    def _start(self, redis: aioredis.Redis) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._pull(redis), name="nodes-relay-pull"),
                asyncio.create_task(self._renew(redis), name="nodes-relay-renew"),
            ]

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew(self, redis: aioredis.Redis) -> None:
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            await asyncio.sleep(CONN_TTL_SEC / 3)
            for node_id, conn in list(self._conns.items()):
                try:
                    if await self._closed_if_stale(redis, conn):
                        continue
                    held = await redis.eval(_RENEW, 1, k.node_connection_key(node_id),
                                            self.replica, CONN_TTL_SEC)  # fmt: skip
                except RedisError as exc:
                    log.warning("redis unavailable", error=str(exc))
                    continue
                if not held:
                    await conn.close(GOING_AWAY, "connected to another gateway replica since")

    async def _pull(self, redis: aioredis.Redis) -> None:
        queue = k.node_relay_key(self.replica)
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            try:
                got = await redis.blpop([queue], timeout=POP_WAIT_SEC)
            except RedisError as exc:
                log.warning("redis unavailable", error=str(exc))
                await asyncio.sleep(POP_WAIT_SEC)
                continue
            if got:
                task = asyncio.create_task(self._forward(redis, got[1]))
                self._forwarding.add(task)
                task.add_done_callback(self._forwarding.discard)

    async def _forward(self, redis: aioredis.Redis, raw: str) -> None:
        """One worker's request: to its node, and the answer back."""
        try:
            request = json.loads(raw)
            rid, node_id = str(request["id"]), str(request["node"])
            path, body = str(request["path"]), request["body"]
        except (ValueError, TypeError, KeyError):
            log.warning("bad relay request dropped")
            return
        try:
            left_ms = await redis.pttl(k.node_request_key(rid))
            if left_ms <= 0:
                return  # the worker gave up waiting
            answer = await self._ask(redis, node_id, rid, path, body, left_ms / 1000)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.rpush(k.node_reply_key(rid), json.dumps(answer))
                pipe.expire(k.node_reply_key(rid), REPLY_TTL_SEC)
                await pipe.execute()
        except RedisError as exc:
            log.warning("redis unavailable", error=str(exc))

    async def _ask(
        self, redis: aioredis.Redis, node_id: str, rid: str, path: str, body: Any, timeout: float
    ) -> Any:
        conn = self._conns.get(node_id)
        if conn is None or await self._closed_if_stale(redis, conn):
            return _envelope("transport_error", f"node {node_id}'s relay connection closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = future
        try:
            await conn.send({"type": "request", "id": rid, "path": path, "token": conn.token,
                             "body": body})  # fmt: skip
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return _envelope("timeout", f"no answer from node {node_id} within {timeout:.1f}s")
        except Exception as exc:  # the connection closed or stopped reading while sending
            log.info("relay send failed", node=node_id, error=repr(exc))
            return _envelope("transport_error", f"node {node_id}'s relay connection failed")
        finally:
            conn.pending.pop(rid, None)
