"""Remote devices on the gateway: ``POST /nodes/register``, ``POST /nodes/heartbeat`` and the
relay WebSocket ``GET /nodes/connect`` (``node_relay.py``).

All three are behind ``gateway.token`` when it is set (``BearerAuth`` protects ``/nodes/``;
the WebSocket checks it itself). A node registers its id, name, the URL workers may call
it on (p2p; optional), its capabilities, its own token (which the fleet presents to it:
stored, never logged nor shown) and ``ttl_sec``; it renews with heartbeats, and goes
offline once ``ttl_sec`` passes without one. Registering again replaces the record (a node
that restarted has a new token). Both scripts stamp the Redis server's time, and nodes
offline for a week are forgotten at the next registration (as is, when ``nodes.max_nodes``
are registered, the one offline longest). The workers read the registry
(``claw_worker/nodes/registry.py``); nothing else passes between them.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute

from claw_ingress.bodies import BodyError, parse_body, read_json
from claw_ingress.node_relay import NODE_ID_PATTERN, NodeRelay
from claw_worker import constants as k
from claw_worker.config.reload import LiveConfig

log = structlog.get_logger(__name__)

FORGET_AFTER_SEC = 7 * 86400  # a node offline this long leaves the registry
RETRY_AFTER_SEC = "2"

Capability = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]

# KEYS: NODES, NODES_SEEN, NODES_STATUS. ARGV: id, the record (a JSON object), the most
# nodes the registry may hold, seconds after which an offline node is forgotten. When the
# registry is full, the node offline longest makes room (it registers again on its return).
# 1: registered; 0: the registry is full of online nodes.
_REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  -- Full: forget the node offline longest (of the 100 seen longest ago), else refuse.
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 99, 'WITHSCORES')
  local room = false
  for i = 1, #oldest, 2 do
    local ok, record = pcall(cjson.decode, redis.call('HGET', KEYS[1], oldest[i]) or '')
    local ttl = ok and type(record) == 'table' and tonumber(record['ttl_sec']) or 0
    if now - tonumber(oldest[i + 1]) > ttl then
      redis.call('HDEL', KEYS[1], oldest[i])
      redis.call('HDEL', KEYS[3], oldest[i])
      redis.call('ZREM', KEYS[2], oldest[i])
      room = true
      break
    end
  end
  if not room then return 0 end
end
local stamp = string.format('%.3f', now)
redis.call('HSET', KEYS[1], ARGV[1], '{"registered_at": ' .. stamp .. ', ' .. string.sub(ARGV[2], 2))
redis.call('ZADD', KEYS[2], stamp, ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# KEYS: NODES, NODES_SEEN, NODES_STATUS. ARGV: id, status ("" clears it).
# 1: renewed; 0: no such node (it must register).
_HEARTBEAT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1000000), ARGV[1])
if ARGV[2] == '' then redis.call('HDEL', KEYS[3], ARGV[1])
else redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
return 1
"""


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=NODE_ID_PATTERN, max_length=64)
    name: str = Field("", max_length=128)
    url: str = Field("", max_length=512)
    capabilities: list[Capability] = Field(default_factory=list, max_length=32)
    token: str = Field(min_length=16, max_length=256)
    ttl_sec: int = Field(60, ge=2, le=86400)

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not name.isprintable():
            raise ValueError("name must be printable text on one line")
        return name

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url:
            return url
        if not url.isprintable():  # `clawctl nodes list` prints it
            raise ValueError("url must be printable text")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("url must start with http:// or https://")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("url has an invalid port") from None
        if not parts.hostname or parts.username is not None or parts.query or parts.fragment:
            raise ValueError("url must be http(s)://host[:port][/path], without user, query or #")
        try:  # as the workers' client will parse it: control characters, bad punycode
            httpx.URL(url).host  # noqa: B018 - decoding the host is the check
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise ValueError(f"url cannot be called: {exc}") from None
        return url

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: str) -> str:
        if not token.isascii() or not token.isprintable() or " " in token:
            # ASCII: the fleet sends it in an Authorization header (httpx cannot encode more)
            raise ValueError("token must be printable ASCII, without spaces")
        return token

    @field_validator("capabilities")
    @classmethod
    def _dedupe(cls, capabilities: list[str]) -> list[str]:
        return list(dict.fromkeys(capabilities))


class HeartbeatBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=NODE_ID_PATTERN, max_length=64)
    status: str = Field("", max_length=64)

    @field_validator("status")
    @classmethod
    def _check_status(cls, status: str) -> str:
        if not status.isprintable():
            raise ValueError("status must be printable text on one line")
        return status


def _unavailable(exc: Exception) -> JSONResponse:
    log.warning("redis unavailable", error=str(exc))
    return JSONResponse({"error": "node registry unavailable, retry later"}, status_code=503,
                        headers={"Retry-After": RETRY_AFTER_SEC})  # fmt: skip


async def register(request: Request) -> JSONResponse:
    live: LiveConfig = request.app.state.live
    config = live.config
    try:
        body = parse_body(RegisterBody, await read_json(request, config.gateway.max_body_bytes))
    except BodyError as exc:
        return JSONResponse(exc.payload, status_code=exc.status)
    if body.ttl_sec > config.nodes.max_ttl_sec:
        error = f"ttl_sec must be at most {config.nodes.max_ttl_sec} (nodes.max_ttl_sec)"
        return JSONResponse({"error": error}, status_code=422)
    record = json.dumps(body.model_dump())
    try:
        done = await request.app.state.redis.eval(
            _REGISTER, 3, k.NODES, k.NODES_SEEN, k.NODES_STATUS,
            body.id, record, config.nodes.max_nodes, FORGET_AFTER_SEC,
        )  # fmt: skip
    except RedisError as exc:
        return _unavailable(exc)
    if not done:
        error = f"the registry holds nodes.max_nodes ({config.nodes.max_nodes}) nodes, all online"
        return JSONResponse({"error": error}, status_code=409)
    log.info("node registered", node=body.id, url=body.url, ttl_sec=body.ttl_sec,
             capabilities=",".join(body.capabilities))  # fmt: skip
    return JSONResponse({"id": body.id, "status": "registered", "ttl_sec": body.ttl_sec})


async def heartbeat(request: Request) -> JSONResponse:
    config = request.app.state.live.config
    try:
        body = parse_body(HeartbeatBody, await read_json(request, config.gateway.max_body_bytes))
    except BodyError as exc:
        return JSONResponse(exc.payload, status_code=exc.status)
    try:
        known = await request.app.state.redis.eval(
            _HEARTBEAT, 3, k.NODES, k.NODES_SEEN, k.NODES_STATUS, body.id, body.status
        )
    except RedisError as exc:
        return _unavailable(exc)
    if not known:
        error = f"unknown node {body.id}: register first (POST /nodes/register)"
        return JSONResponse({"error": error}, status_code=404)
    return JSONResponse({"id": body.id, "status": "renewed"})


def node_routes(live: LiveConfig) -> list[BaseRoute]:
    """The routes create_app mounts (``/nodes/`` is among BearerAuth's protected prefixes)."""
    relay = NodeRelay(live)
    return [
        Route("/nodes/register", register, methods=["POST"]),
        Route("/nodes/heartbeat", heartbeat, methods=["POST"]),
        WebSocketRoute("/nodes/connect", relay.serve),
    ]
