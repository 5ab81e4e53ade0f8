"""``GET /ws``: the gateway's own WebSocket, a chat channel for browsers and scripts.

Frames are JSON text. In: ``{"type": "message", "text": ..., "session": ...}`` (the session
defaults to one of the connection's own, ``ws:<uuid>``; a named one is also the chat's id,
and its session key is in the ``ws:`` namespace whatever it is named: :func:`key`) and
``{"type": "ping"}``. Out:
``{"type": "status", "status": "queued", "message_id", "run_id", "session"}`` once a message
is accepted (a slash command's status is ``command``), ``{"type": "reply", "message_id",
"text", "session"}`` when the reply comes (through ``delivery.py``, which calls :meth:`send`
on the replica holding the session's connection), ``{"type": "pong"}`` and
``{"type": "error", "error"}`` for a frame it cannot take (the connection stays open, unless
a client keeps sending them).

Access: a browser ``Origin`` only from ``gateway.allowed_origins`` and, on loopback, a Host
naming this gateway, checked before the handshake is accepted (403 with the reason: a page
elsewhere never gets an open socket); then ``gateway.token`` when set (``Authorization:
Bearer`` or, for browsers, which cannot set headers on a WebSocket, ``?token=``, compared in
constant time): a wrong one is accepted and closed with 1008 and the reason. A frame larger
than ``gateway.max_frame_bytes`` (default: max_body_bytes) closes the connection with 1009.
Messages count against the sender's rate limit (the connection's session is its sender): over
it, an error frame with ``retry_after_sec``. There is no config section: the channel is always
on, open to whoever passes those checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from claw_ingress.auth import bearer_token
from claw_ingress.bodies import BodyError, loads_bounded, parse_body
from claw_ingress.channels.base import Channel, ChannelContext, SendError
from claw_ingress.guards import arrived_on_loopback, host_allowed, origin_allowed
from claw_worker.config.channels import ChannelConfig
from claw_worker.config.schema import GatewayConfig
from claw_worker.contract import SESSION_NAME_MAX, InboundMessage, new_message_id

log = structlog.get_logger(__name__)

# The bucket delivery takes tokens from is the channel's, shared by every connection; a
# WebSocket has no platform limit to respect, so it only stops a runaway loop.
FIXED_CONFIG = ChannelConfig(enabled=True, dm_policy="open", rate_per_sec=1000.0, burst=1000)
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
GOING_AWAY = 1001
MAX_BAD_FRAMES = 20  # in a row: then the client is closed (1008)
MAX_SESSIONS = 100  # sessions one connection may speak in
SEND_TIMEOUT_SEC = 10.0  # a client that does not read is closed
PREVIEW_CHARS = 80
WS_CHANNEL = "ws"  # the channel's name, and its sessions' namespace (ws:...)


class MessageFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["message"]
    text: str = Field(min_length=1, max_length=200_000)
    session: str | None = Field(None, min_length=1, max_length=SESSION_NAME_MAX,
                                pattern=r"^[^\s{}]+$")  # fmt: skip


def key(session: str) -> str:
    """The session key of a session named on this channel: always in the ``ws:`` namespace,
    like every chat channel's ``<channel>:<chat_id>``. The name is also the chat (where
    replies go), so it is mapped rather than refused: ``nl-chat`` is ``ws:nl-chat``, and
    ``telegram:123`` is ``ws:telegram:123``, never Telegram's conversation."""
    return session if session.startswith(f"{WS_CHANNEL}:") else f"{WS_CHANNEL}:{session}"


class _Connection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.session = f"{WS_CHANNEL}:{uuid.uuid4().hex}"  # the default one
        self.sessions: set[str] = set()
        self.lock = asyncio.Lock()  # replies (delivery) and answers (the reader) interleave

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await asyncio.wait_for(self.websocket.send_json(frame), SEND_TIMEOUT_SEC)


async def ws_endpoint(websocket: WebSocket) -> None:
    """The ``/ws`` route: hands the connection to the started channel."""
    channel = websocket.app.state.channels.get(WebSocketChannel.name)
    if not isinstance(channel, WebSocketChannel):
        await websocket.accept()
        await websocket.close(TRY_AGAIN_LATER, "the WebSocket channel is starting")
        return
    await channel.serve(websocket)


def handshake_refusal(websocket: WebSocket, gateway: GatewayConfig) -> str | None:
    """Why this handshake is refused before it is accepted (Host, Origin), or None."""
    scope = websocket.scope
    host = websocket.headers.get("host")
    if host is not None and arrived_on_loopback(scope) and not host_allowed(host, scope, gateway):
        return "the Host is not a name of this gateway (gateway.allowed_hosts)"
    origin = websocket.headers.get("origin")
    if origin is not None and not origin_allowed(origin, gateway):
        return "this Origin is not in gateway.allowed_origins"
    return None


def refusal(websocket: WebSocket, gateway: GatewayConfig) -> str | None:
    """Why this connection may not talk to the agent (Host, Origin, token), or None (a close
    reason: at most 123 bytes, so nothing the client sent is quoted)."""
    refused = handshake_refusal(websocket, gateway)
    if refused is not None:
        return refused
    if gateway.token:
        given = bearer_token(websocket.headers.get("authorization", "").encode())
        given = given or websocket.query_params.get("token", "").encode()
        if not hmac.compare_digest(given, gateway.token.encode()):
            return "missing or wrong token"
    return None


class WebSocketChannel(Channel):
    name = WS_CHANNEL
    max_text = 100_000  # a frame of at most ~600 KB even with every character escaped
    connection_bound = True

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._held: dict[str, set[_Connection]] = {}  # session -> its open connections here
        self._open: set[_Connection] = set()
        self._renew: asyncio.Task[None] | None = None

    @property
    def config(self) -> ChannelConfig:
        return FIXED_CONFIG

    async def start(self) -> None:
        self._renew = self.background(self.keep_holding(lambda: self._held), "hold")

    async def stop(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                await conn.websocket.close(GOING_AWAY, "the gateway is stopping")

    def describe(self) -> dict[str, Any]:
        return {"connections": len(self._open), "sessions": len(self._held)}

    def holds(self, chat_id: str) -> bool:
        return chat_id in self._held

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        conns = list(self._held.get(chat_id, ()))
        if not conns:
            raise SendError(f"no open connection for session {chat_id}", permanent=True)
        frame = {"type": "reply", "message_id": reply_to, "text": text, "session": chat_id}
        delivered = 0
        for conn in conns:
            try:
                await conn.send(frame)
                delivered += 1
            except Exception as exc:  # closed meanwhile, or not reading
                log.info("websocket send failed", channel=self.name, chat_id=chat_id,
                         error=repr(exc))  # fmt: skip
                await self._close(conn, GOING_AWAY, "not reading")
        if not delivered:
            raise SendError(f"the connections of session {chat_id} closed", permanent=True)

    # -- one connection ----------------------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        gateway = self.ctx.live.config.gateway
        refused = handshake_refusal(websocket, gateway)
        if refused is not None:
            log.info("websocket refused", channel=self.name, error=refused)
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(JSONResponse({"error": refused}, 403))
            else:  # closed before accept: the server answers the handshake 403
                await websocket.close(POLICY_VIOLATION, refused)
            return
        await websocket.accept()
        reason = refusal(websocket, gateway)
        if reason is None and len(self._open) >= gateway.max_connections:
            await websocket.close(TRY_AGAIN_LATER, "too many WebSocket connections")
            return
        if reason is not None:
            log.info("websocket refused", channel=self.name, error=reason)
            await websocket.close(POLICY_VIOLATION, reason)
            return
        conn = _Connection(websocket)
        self._open.add(conn)
        try:
            await self._hold(conn, conn.session)
            await self._read(conn)
        except RedisError as exc:
            log.warning("redis unavailable", channel=self.name, error=str(exc))
            await self._close(conn, TRY_AGAIN_LATER, "message store unavailable, retry later")
        except (WebSocketDisconnect, OSError, TimeoutError):
            pass  # the client went away, or stopped reading
        finally:
            await self._forget(conn)

    async def _read(self, conn: _Connection) -> None:
        bad = 0
        while True:
            event = await conn.websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            max_bytes = self.ctx.live.config.gateway.frame_limit  # live: a reload changes it
            text = event.get("text")
            data = (
                text.encode("utf-8", "surrogatepass")
                if text is not None
                else event.get("bytes") or b""
            )
            if len(data) > max_bytes:
                await self._close(conn, MESSAGE_TOO_BIG, f"frame over {max_bytes} bytes")
                return
            error = await self._handle(conn, text, data)
            if error is None:
                bad = 0
                continue
            bad += 1
            if bad >= MAX_BAD_FRAMES:
                await self._close(conn, POLICY_VIOLATION, "too many bad frames")
                return
            await conn.send({"type": "error", **error})

    async def _handle(
        self, conn: _Connection, text: str | None, data: bytes
    ) -> dict[str, Any] | None:
        """Act on one frame (``data``: its text, UTF-8); the error to send back, or None."""
        if text is None:
            return {"error": "send JSON in text frames, not binary ones"}
        try:
            frame = loads_bounded(data)
            if not isinstance(frame, dict):
                return {"error": "a frame is a JSON object with a type (message, ping)"}
            kind = frame.get("type")
            if kind == "ping":
                await conn.send({"type": "pong"})
                return None
            if kind != "message":
                return {"error": f"unknown frame type {str(kind)[:40]!r} (message, ping)"}
            message = parse_body(MessageFrame, frame)
        except BodyError as exc:
            return {**exc.payload, "error": str(exc.payload["error"]).replace("body", "frame")}
        session = message.session or conn.session
        if session not in conn.sessions and len(conn.sessions) >= MAX_SESSIONS:
            return {"error": f"at most {MAX_SESSIONS} sessions per connection"}
        message_id = new_message_id()
        inbound = InboundMessage(
            message_id=message_id, channel=self.name, chat_id=session, session_key=key(session),
            text=message.text, metadata={"platform_message_id": message_id},
        )  # fmt: skip
        try:
            if session not in conn.sessions:
                await self._hold(conn, session)
            accepted = await self.receive(inbound)
        except RedisError as exc:
            log.warning("redis unavailable", channel=self.name, error=str(exc))
            return {"error": "message store unavailable, retry later"}
        if accepted.status == "limited":
            return {"error": f"too many messages; retry after {accepted.retry_after_sec}s "
                    "(gateway.rate_limit)", "retry_after_sec": accepted.retry_after_sec,
                    "message_id": message_id}  # fmt: skip
        await conn.send({"type": "status", "status": accepted.status, "message_id": message_id,
                         "run_id": accepted.run_id, "session": session})  # fmt: skip
        return None

    async def _hold(self, conn: _Connection, session: str) -> None:
        conn.sessions.add(session)
        self._held.setdefault(session, set()).add(conn)
        await self.ctx.hold_connection(self.name, session)

    async def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        for session in conn.sessions:
            held = self._held.get(session, set())
            held.discard(conn)
            if not held:
                self._held.pop(session, None)
                await self.release_connection(session, lambda s=session: s in self._held)
        conn.sessions.clear()

    async def _close(self, conn: _Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await conn.websocket.close(code, reason)
