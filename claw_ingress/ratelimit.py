"""Rate limits kept in Redis, so they hold in total across ingress replicas.

Two kinds of token bucket (``gateway.rate_limit``):

- **per client address** (the peer's, or behind ``gateway.trusted_proxies`` the one they
  forward: ``client_addr.py``; an IPv6 address counts as its /64, ``address_bucket``), on every HTTP request and WebSocket handshake but ``/health``
  (:class:`IpRateLimit`, in front of every other check, so a flood of wrong tokens or
  foreign Origins counts too): over it, 429 with ``Retry-After`` (seconds); a WebSocket
  handshake gets the same 429 (or, where the server cannot answer a handshake with a
  response, is closed before it is accepted).
- **per sender** (``<channel>:<sender_id>``) on every message, from any channel, the APIs
  and ``/ws`` (:meth:`RateLimiter.sender`, called by ``inbox.py``).

A bucket holds up to ``burst`` tokens and refills at ``per_min`` a minute; each request or
message takes one. One Lua script reads, refills and takes, on Redis' own clock (``TIME``),
so replicas with skewed clocks still share one bucket.

When Redis cannot be reached the limiter lets everything through (fail open) and warns: a
message must not be lost because the limiter broke, and without Redis the mailbox refuses
the message anyway, with its own clear 503.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from claw_ingress.client_addr import scope_client_address
from claw_ingress.errors import error_payload
from claw_worker import constants as k
from claw_worker.config.reload import LiveConfig

log = structlog.get_logger(__name__)

UNLIMITED_PATHS = frozenset({"/health"})  # probes must answer whatever a client does
WARN_EVERY_SEC = 10.0  # "limiter unavailable" at most this often per process
MAX_SUBJECT_CHARS = 200  # longer sender ids are hashed into the key

# KEYS[1]: the bucket (HASH tokens, at_ms)
# ARGV[1]: refill rate, tokens per minute (> 0); ARGV[2]: burst, the bucket's size
# Returns {1, 0} when a token was taken, else {0, ms until one is there}. The key expires
# once the bucket would be full again (a full bucket and no key are the same).
TAKE_TOKEN = """
local per_ms = tonumber(ARGV[1]) / 60000.0
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * per_ms)
local taken, wait_ms = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait_ms = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / per_ms) + 1000)
return {taken, wait_ms}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_sec: int = 0  # when not allowed: wait this long (whole seconds, at least 1)


ALLOWED = Verdict(True)


class RateLimiter:
    def __init__(self, client: aioredis.Redis) -> None:
        self._take = client.register_script(TAKE_TOKEN)
        self._warned_at = 0.0

    async def take(self, kind: str, subject: str, per_min: int, burst: int) -> Verdict:
        """Take one token from the ``kind`` bucket of ``subject`` (``per_min`` 0: no limit)."""
        if per_min <= 0:
            return ALLOWED
        if len(subject) > MAX_SUBJECT_CHARS:
            subject = "sha256:" + hashlib.sha256(subject.encode()).hexdigest()
        try:
            taken, wait_ms = await self._take(keys=[k.rate_bucket_key(kind, subject)],
                                              args=[per_min, burst])  # fmt: skip
        except RedisError as exc:  # fail open: see the module's docstring
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_SEC:
                self._warned_at = now
                log.warning("rate limiter unavailable; requests are let through",
                            error=str(exc))  # fmt: skip
            return ALLOWED
        if taken:
            return ALLOWED
        return Verdict(False, max(1, math.ceil(int(wait_ms) / 1000)))

    async def sender(self, live: LiveConfig, channel: str, sender: str) -> Verdict:
        limits = live.config.gateway.rate_limit
        return await self.take("sender", f"{channel}:{sender}", limits.per_sender_per_min,
                               limits.per_sender_burst)  # fmt: skip


def address_bucket(address: str) -> str:
    """Whose bucket a client address draws on: an IPv6 address its /64 (one host or site
    gets a whole /64, so per exact address it would have endless buckets), an IPv4-mapped
    one its IPv4 address, anything else itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def too_many_payload(path: str, retry_after_sec: int, what: str) -> dict[str, object]:
    said = f"too many {what}; retry after {retry_after_sec}s (gateway.rate_limit)"
    return error_payload(path, 429, said, code="rate_limit_exceeded",
                         retry_after_sec=retry_after_sec)  # fmt: skip


def too_many_response(path: str, retry_after_sec: int, what: str) -> JSONResponse:
    """A route's 429."""
    return JSONResponse(too_many_payload(path, retry_after_sec, what), status_code=429,
                        headers={"Retry-After": str(retry_after_sec)})  # fmt: skip


def too_many(path: str, retry_after_sec: int, what: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of a 429, for pure ASGI."""
    body = json.dumps(too_many_payload(path, retry_after_sec, what)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_sec).encode()),
    ]
    return body, headers


class IpRateLimit:
    """The per-address limit, in front of every route but ``/health`` (pure ASGI)."""

    def __init__(self, app: ASGIApp, live: LiveConfig) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter: RateLimiter | None = getattr(scope["app"].state, "limiter", None)
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in UNLIMITED_PATHS
            or limiter is None
        ):
            await self.app(scope, receive, send)
            return
        gateway = self.live.config.gateway
        # The peer, or the client behind a trusted proxy (gateway.trusted_proxies).
        client = scope_client_address(scope, gateway.trusted_proxies)
        if client is None:  # a unix socket: one local client
            await self.app(scope, receive, send)
            return
        limits = gateway.rate_limit
        verdict = await limiter.take("ip", address_bucket(client), limits.per_ip_per_min,
                                     limits.per_ip_burst)  # fmt: skip
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        log.info("rate limited", kind="ip", client=client, path=scope["path"],
                 retry_after_sec=verdict.retry_after_sec)  # fmt: skip
        body, headers = too_many(scope["path"], verdict.retry_after_sec,
                                 "requests from this address")  # fmt: skip
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await receive()  # websocket.connect
            await send({"type": "websocket.http.response.start", "status": 429,
                        "headers": headers})  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1008})  # before accept: a 403
