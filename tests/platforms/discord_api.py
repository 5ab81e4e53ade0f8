"""A loopback Discord: the Gateway over a real websocket and the REST routes the adapter uses,
in Discord's documented wire format (topics/gateway, topics/gateway-events, resources/message,
topics/rate-limits; API v10, JSON encoding).

Gateway (``websockets`` server, its own thread and event loop): Hello (op 10) on connect;
Heartbeat (op 1) recorded and answered with an ACK (op 11); Identify (op 2) checks the token
(close 4004 if wrong; ``identify_close`` closes with any code instead) and answers Ready
(``session_id``, ``resume_gateway_url`` = ``<gateway>/resume``, the bot user); Resume (op 6)
replays the dispatches after ``seq`` and answers Resumed, or Invalid Session (op 9, ``d``
false) for an unknown session. Dispatches made while no connection holds the session are
kept and replayed on Resume, as Discord does. ``drop(code)``, ``reconnect()`` (op 7),
``invalidate()`` (op 9) and ``stop_acks()`` (the connection stays, its heartbeats are no
longer acknowledged: a zombie) script the disconnects; ``request_heartbeat()`` sends op 1.

REST (``ThreadingHTTPServer``): ``GET /api/v10/gateway/bot`` (401 for a wrong token),
``POST /api/v10/channels/{id}/messages`` (recorded; ``rate_limit(1.5)`` queues a 429 with
``retry_after`` 1.5; over 2000 characters → 400; a channel in ``forbidden`` → 403) and
``POST /api/v10/channels/{id}/typing`` (204).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.platforms.base import Handler, LoopbackHTTP

BOT_TOKEN = "discord-test-bot-token-0123456789"
BOT_ID = "900000000000000001"
BOT_NAME = "clawbot"
_ids = itertools.count(1_200_000_000_000_000_000)


def snowflake() -> str:
    return str(next(_ids))


@dataclass
class Post:
    channel_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic()


class _Handler(Handler):
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        body = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, payload = self.fake.handle_rest(method, self.path, headers, body)
        if payload is None:
            self.send_body(status, None, b"", extra)
        else:
            self.send_json(status, payload, extra)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class DiscordAPI(LoopbackHTTP):
    handler = _Handler
    poll_interval = 0.1

    def __init__(self, *, token: str = BOT_TOKEN, heartbeat_ms: int = 300) -> None:
        self.token = token
        self.heartbeat_ms = heartbeat_ms
        self._unacked: set[ServerConnection] = set()  # connections made zombies
        self.identify_close: int | None = None  # close every Identify with this code
        self.forbidden: set[str] = set()
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.heartbeats: list[tuple[float, Any]] = []  # (monotonic time, d)
        self.paths: list[str] = []  # request path of every gateway connection
        self.posts: list[Post] = []  # create-message requests that succeeded
        self.attempts: list[Post] = []  # every create-message request, 429s included
        self.typing: list[str] = []
        self.gateway_bot_calls = 0
        self._rate_limits: deque[float] = deque()
        self._lock = threading.Lock()
        self.session_id = ""
        self.seq = 0
        self._events: list[dict[str, Any]] = []  # this session's dispatches, for replay
        self._ws: ServerConnection | None = None  # the connection holding the session
        self._announced: ServerConnection | None = None  # ... once sent Ready / Resumed
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> DiscordAPI:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._server = self._call(self._serve())
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.close()
            self._call(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def _serve(self) -> Server:
        return await serve(self._converse, "127.0.0.1", 0)

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- scripting (from the test's thread) ------------------------------------------------
    def rate_limit(self, retry_after: float) -> None:
        """The next create-message request answers 429 with this ``retry_after``."""
        with self._lock:
            self._rate_limits.append(retry_after)

    def dispatch(self, kind: str, data: dict[str, Any]) -> int:
        """Send a dispatch (op 0) to the session; its sequence number."""
        return int(self._call(self._dispatch(kind, data)))

    def message_create(
        self,
        channel_id: str,
        content: str,
        *,
        author_id: str = "100000000000000001",
        username: str = "alice",
        bot: bool = False,
        guild_id: str | None = None,
        mentions: tuple[str, ...] = (),
        referenced: dict[str, Any] | None = None,
        attachments: tuple[dict[str, Any], ...] = (),
    ) -> str:
        """A user's message (MESSAGE_CREATE); its id."""
        message_id = snowflake()
        data: dict[str, Any] = {
            "id": message_id, "channel_id": channel_id, "type": 19 if referenced else 0,
            "author": {"id": author_id, "username": username, "global_name": username.title(),
                       "discriminator": "0", **({"bot": True} if bot else {})},
            "content": content, "timestamp": "2025-01-01T00:00:00.000000+00:00",
            "tts": False, "mention_everyone": False, "mention_roles": [],
            "mentions": [{"id": uid, "username": BOT_NAME if uid == BOT_ID else "someone",
                          **({"bot": True} if uid == BOT_ID else {})} for uid in mentions],
            "attachments": list(attachments), "embeds": [], "pinned": False,
        }  # fmt: skip
        if guild_id is not None:
            data["guild_id"] = guild_id
            data["member"] = {"roles": [], "joined_at": "2024-01-01T00:00:00.000000+00:00"}
        if referenced is not None:
            data["message_reference"] = {"type": 0, "message_id": referenced["id"],
                                         "channel_id": channel_id}  # fmt: skip
            data["referenced_message"] = referenced
        self.dispatch("MESSAGE_CREATE", data)
        return message_id

    def drop(self, code: int = 1001, reason: str = "going away") -> None:
        self._call(self._close(code, reason))

    def reconnect(self) -> None:
        self._call(self._send_current({"op": 7, "d": None}))

    def invalidate(self) -> None:
        self._call(self._send_current({"op": 9, "d": False}))

    def stop_acks(self) -> None:
        """The current connection goes on but acknowledges no heartbeat (a zombie)."""
        self._call(self._stop_acks())

    def request_heartbeat(self) -> None:
        """Ask for a heartbeat now (op 1 from the server)."""
        self._call(self._send_current({"op": 1, "d": None}))

    @property
    def connected(self) -> bool:
        """A connection holds the session and was sent Ready (or Resumed)."""
        return self._ws is not None and self._announced is self._ws

    # -- the gateway (in the server's loop) ------------------------------------------------
    async def _converse(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        await ws.send(json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms},
                                  "s": None, "t": None}))  # fmt: skip
        try:
            async for raw in ws:
                payload = json.loads(raw)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    self.heartbeats.append((time.monotonic(), data))
                    if ws not in self._unacked:
                        await ws.send(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(ws, data)
                elif op == 6:
                    await self._resume(ws, data)
                else:
                    await ws.close(4001, "Unknown opcode.")
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None

    async def _identify(self, ws: ServerConnection, data: dict[str, Any]) -> None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await ws.close(4004, "Authentication failed.")
            return
        if self.identify_close is not None:
            await ws.close(self.identify_close, "Disallowed intent(s).")
            return
        self.session_id, self.seq, self._events = snowflake(), 0, []
        self._ws = ws
        await self._dispatch("READY", {
            "v": 10, "session_id": self.session_id,
            "resume_gateway_url": f"{self.gateway_url}/resume",
            "user": {"id": BOT_ID, "username": BOT_NAME, "bot": True, "discriminator": "0"},
            "guilds": [], "application": {"id": BOT_ID, "flags": 0},
        })  # fmt: skip
        self._announced = ws

    async def _resume(self, ws: ServerConnection, data: dict[str, Any]) -> None:
        self.resumes.append(data)
        if data.get("token") != self.token or data.get("session_id") != self.session_id:
            await ws.send(json.dumps({"op": 9, "d": False}))
            return
        if self._ws is not None and self._ws is not ws:
            await self._ws.close(4000, "Session resumed elsewhere")
        self._ws = ws
        for event in self._events:
            if event["s"] > (data.get("seq") or 0):
                await ws.send(json.dumps(event))
        await self._dispatch("RESUMED", {})
        self._announced = ws

    async def _dispatch(self, kind: str, data: dict[str, Any]) -> int:
        self.seq += 1
        event = {"op": 0, "t": kind, "s": self.seq, "d": data}
        self._events.append(event)
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):  # kept for the replay
                await self._ws.send(json.dumps(event))
        return self.seq

    async def _close(self, code: int, reason: str) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(code, reason)

    async def _stop_acks(self) -> None:
        if self._ws is not None:
            self._unacked.add(self._ws)

    async def _send_current(self, payload: dict[str, Any]) -> None:
        if self._ws is not None:
            await self._ws.send(json.dumps(payload))

    # -- REST (called from the HTTP server's threads) --------------------------------------
    def handle_rest(self, method: str, path: str, headers: dict[str, str], body: bytes
                    ) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        if headers.get("authorization") != f"Bot {self.token}":
            return 401, {}, {"message": "401: Unauthorized", "code": 0}
        parts = path.strip("/").split("/")
        if method == "GET" and parts == ["api", "v10", "gateway", "bot"]:
            self.gateway_bot_calls += 1
            return (
                200,
                {},
                {
                    "url": self.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 999,
                        "reset_after": 14400000,
                        "max_concurrency": 1,
                    },
                },
            )
        if method == "POST" and parts[:3] == ["api", "v10", "channels"] and len(parts) == 5:
            channel_id, what = parts[3], parts[4]
            if what == "typing":
                self.typing.append(channel_id)
                return 204, {}, None
            if what == "messages":
                return self._create_message(channel_id, headers, body)
        return 404, {}, {"message": "404: Not Found", "code": 0}

    def _create_message(self, channel_id: str, headers: dict[str, str], body: bytes
                        ) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        if not headers.get("content-type", "").startswith("application/json"):
            return 400, {}, {"message": "Cannot send an empty message", "code": 50006}
        data = json.loads(body)
        post = Post(channel_id, data, headers, time.monotonic())
        with self._lock:
            self.attempts.append(post)
            retry_after = self._rate_limits.popleft() if self._rate_limits else None
        if retry_after is not None:
            return 429, {"Retry-After": str(math.ceil(retry_after)),
                         "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset-After": str(retry_after),
                         "X-RateLimit-Scope": "user"}, {
                "message": "You are being rate limited.", "retry_after": retry_after,
                "global": False}  # fmt: skip
        if channel_id in self.forbidden:
            return 403, {}, {"message": "Missing Access", "code": 50001}
        content = data.get("content") or ""
        if not content.strip() or len(content) > 2000:
            return 400, {}, {"message": "Invalid Form Body", "code": 50035}
        with self._lock:
            self.posts.append(post)
        return 200, {}, {"id": snowflake(), "channel_id": channel_id, "content": content,
                         "author": {"id": BOT_ID, "username": BOT_NAME, "bot": True}}  # fmt: skip
