"""Request checks in front of every route (pure ASGI), read from the live config per request.

- **Host** (DNS rebinding): on a connection that arrived at a loopback address, the Host
  header must name localhost, a loopback address, ``gateway.host`` or an entry of
  ``gateway.allowed_hosts`` (any port): else 421. A page on a rebound name reaches the
  loopback port under its own name and is refused here.
- **Origin** (cross-site requests): a request carrying an ``Origin`` header not in
  ``gateway.allowed_origins`` is refused (403), ``Origin: null`` included. CORS is closed by
  default; an allowed origin gets its preflight answered and ``Access-Control-Allow-Origin``
  naming it, never ``*``.
- **Content-Type**: a request with a body must send ``application/json`` (UTF-8): else 415.
  An HTML form or a ``text/plain`` fetch cannot send that cross-site without a preflight.
- **Body size**: no request body over ``gateway.max_body_bytes`` (:func:`body_limit`: the
  OpenAI chat route's is larger), on any route (webhooks included, which read their raw
  body themselves): 413 from the Content-Length, or as soon as a streamed body passes the
  limit (and the connection is closed).
- **Body deadline**: the body must arrive within ``gateway.body_timeout_sec`` (408, and the
  connection is closed). A client that goes away mid-request is one log line, not a
  traceback.
- **Trailing slash**: ``/v1/chat/completions/`` is served as ``/v1/chat/completions``
  (:class:`TrailingSlash`), not redirected: Starlette's redirect names ``http://`` and the
  Host it was given, wrong behind a TLS proxy, and the client sends a POST's body twice.

Connection-level limits (header deadline, connection cap) live in ``connections.py``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import shlex
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from claw_ingress.connections import BODY_RECEIVED, DROPPED
from claw_ingress.errors import error_payload
from claw_worker.config.reload import LiveConfig
from claw_worker.config.schema import GatewayConfig

log = structlog.get_logger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
CORS_ALLOW_METHODS = "GET, POST"
CORS_ALLOW_HEADERS = "authorization, content-type"
CORS_MAX_AGE_SEC = "600"


OPENAI_CHAT_PATH = "/v1/chat/completions"


class BodyTooLarge(Exception):
    """The client sent more body than :func:`body_limit`."""

    def __init__(self, limit: tuple[int, str]) -> None:
        size, setting = limit
        super().__init__(f"request body is larger than {size} bytes (gateway.{setting})")


def body_limit(path: str, gateway: GatewayConfig) -> tuple[int, str]:
    """The largest body taken on ``path``, and the setting that says so: the OpenAI chat
    route's clients resend the whole conversation (``max_openai_body_bytes``)."""
    if path == OPENAI_CHAT_PATH and gateway.max_openai_body_bytes > gateway.max_body_bytes:
        return gateway.max_openai_body_bytes, "max_openai_body_bytes"
    return gateway.max_body_bytes, "max_body_bytes"


class BodyTimeout(Exception):
    """The client did not send its whole body within the body timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"request body not received within {timeout:g}s")


async def respond(
    send: Send, status: int, payload: dict[str, Any] | None, headers: list[tuple[bytes, bytes]]
) -> None:
    """A whole response: ``payload`` as JSON, or no body at all (None: a 204)."""
    body = json.dumps(payload).encode() if payload is not None else b""
    if payload is not None:
        headers = [*headers, (b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def split_host(value: str) -> tuple[str, str]:
    """``(name, port)`` of a Host header value ("" when absent), brackets of IPv6 removed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.removeprefix(":")
    name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return name.rstrip("."), port


def arrived_on_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server or server[1] is None:  # a unix socket: browsers cannot reach it
        return False
    return _is_loopback(server[0])


@functools.lru_cache(maxsize=64)  # the addresses this process listens on
def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def host_allowed(value: str, scope: Scope, gateway: GatewayConfig) -> bool:
    name, port = split_host(value)
    names = _names(gateway)
    if name in names.own or name == str(scope["server"][0]).lower():
        return True
    return any(name == host and host_port in ("", port) for host, host_port in names.hosts)


def origin_allowed(origin: str, gateway: GatewayConfig) -> bool:
    return origin.lower() in _names(gateway).origins


@dataclass(frozen=True)
class _Names:
    """The names a gateway section allows, worked out once per section (a reload swaps the
    config, and with it the section)."""

    own: frozenset[str]  # localhost, the loopback addresses, gateway.host
    hosts: tuple[tuple[str, str], ...]  # gateway.allowed_hosts as (name, port or "")
    origins: frozenset[str]


_NAMES: dict[int, tuple[GatewayConfig, _Names]] = {}


def _names(gateway: GatewayConfig) -> _Names:
    hit = _NAMES.get(id(gateway))
    if hit is None or hit[0] is not gateway:
        if len(_NAMES) > 8:
            _NAMES.clear()
        names = _Names(
            own=frozenset({*LOOPBACK_NAMES, split_host(gateway.host)[0]}),
            hosts=tuple(split_host(entry) for entry in gateway.allowed_hosts),
            origins=frozenset(o.lower().rstrip("/") for o in gateway.allowed_origins),
        )
        hit = _NAMES[id(gateway)] = (gateway, names)
    return hit[1]


def content_type_problem(method: str, headers: dict[str, str]) -> str | None:
    """Why a request's Content-Type is refused, or None (``headers``: lower-case names)."""
    if method in SAFE_METHODS:
        return None
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):  # else read as "not UTF-8 JSON", the cause unsaid
        return f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed"
    given = headers.get("content-type")
    if given is None:
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
        return "a request body needs Content-Type: application/json" if has_body else None
    if given == JSON_TYPE:  # as most clients send it
        return None
    mime, *params = [part.strip().lower() for part in given.split(";")]
    charset = next((p.split("=", 1)[1].strip('" ') for p in params if p.startswith("charset=")), "")
    if mime == JSON_TYPE and charset in ("", "utf-8", "utf8"):
        return None
    return f"Content-Type must be application/json (UTF-8), not {given!r}"


# The request headers the guard reads (the first of each, as Starlette's Headers.get).
_READ = frozenset(
    {b"host", b"origin", b"content-type", b"content-length", b"transfer-encoding",
     b"content-encoding", b"access-control-request-method"}
)  # fmt: skip


def _read_headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _READ:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


class TrailingSlash:
    """Routes match a path with or without its trailing slashes (outermost: the other
    guards, the auth and the rate limit see the path the route will)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        if scope["type"] in ("http", "websocket") and len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
        await self.app(scope, receive, send)


class RequestGuard:
    def __init__(self, app: ASGIApp, live: LiveConfig) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = self.live.config.gateway
        headers = _read_headers(scope)
        origin = headers.get("origin")
        limit = body_limit(scope["path"], gateway)
        refusal = self._refusal(scope, headers, gateway, origin, limit)
        if refusal is not None:
            status, error = refusal
            log.info("request refused", status=status, error=error, path=scope["path"],
                     method=scope["method"])  # fmt: skip
            await respond(send, status, error_payload(scope["path"], status, error), [])
            return
        if origin is not None:  # an allowed origin (others were refused)
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
            ]
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                await respond(send, 204, None, [
                    *cors,
                    (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
                    (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
                    (b"access-control-max-age", CORS_MAX_AGE_SEC.encode()),
                ])  # fmt: skip
                return
            send = _with_headers(send, cors)
        await self._serve(scope, receive, send, gateway, limit)

    def _refusal(
        self,
        scope: Scope,
        headers: dict[str, str],
        gateway: GatewayConfig,
        origin: str | None,
        limit: tuple[int, str],
    ) -> tuple[int, str] | None:
        host = headers.get("host")
        rebound = (
            host is not None
            and arrived_on_loopback(scope)
            and not host_allowed(host, scope, gateway)
        )
        if rebound:
            return 421, (
                f"Host {host!r} is not a name of this gateway (a guard against DNS "
                "rebinding). If a proxy of yours uses that name, add it to "
                "gateway.allowed_hosts: clawctl config set gateway.allowed_hosts "
                + shlex.quote(json.dumps([split_host(host)[0]]))
            )
        if origin is not None and not origin_allowed(origin, gateway):
            return 403, (
                f"cross-origin requests from {origin!r} are not allowed; a web app that "
                "should call this API needs its origin in gateway.allowed_origins"
            )
        problem = content_type_problem(scope["method"], headers)
        if problem is not None:
            return 415, problem
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit[0]:
            return 413, str(BodyTooLarge(limit))
        return None

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        gateway: GatewayConfig,
        limit: tuple[int, str],
    ) -> None:
        started, timeout = False, gateway.body_timeout_sec

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            timed = _body_deadline(scope, receive, timeout)
            capped = _body_cap(timed, limit)
            await self.app(scope, capped, tracked_send)
        except BodyTooLarge as exc:
            log.info("request body too large", path=scope["path"], limit=limit[0])
            if not started:
                await respond(send, 413, error_payload(scope["path"], 413, str(exc)),
                              [(b"connection", b"close")])  # fmt: skip
        except BodyTimeout as exc:
            log.info("request body timed out", path=scope["path"], timeout_sec=timeout)
            if not started:
                await respond(send, 408, error_payload(scope["path"], 408, str(exc)),
                              [(b"connection", b"close")])  # fmt: skip
        except ClientDisconnect:
            if not scope.get(DROPPED):  # else the connection guard closed it, and said so
                log.info("client disconnected", path=scope["path"], method=scope["method"],
                         during="request body")  # fmt: skip


def _body_deadline(scope: Scope, receive: Receive, timeout: float) -> Receive:
    """``receive`` that raises BodyTimeout once the body has taken ``timeout`` seconds.

    Only the body is timed: after its last part, a read waits for a disconnect for as long
    as the app likes (a request waiting for the agent's reply). A body the connection has
    already read whole (``BODY_RECEIVED``, set by ``protocols.py``: most requests) needs no
    timer: the read returns at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body_done = False

    async def timed_receive() -> Message:
        nonlocal body_done
        if body_done or scope.get(BODY_RECEIVED):
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):  # (wait_for would make a task per part)
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(timeout) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return timed_receive


def _body_cap(receive: Receive, limit: tuple[int, str]) -> Receive:
    """``receive`` that raises BodyTooLarge once the body passed ``limit`` (bytes, setting;
    a chunked body has no Content-Length to refuse up front)."""
    size = 0

    async def capped_receive() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit[0]:
                raise BodyTooLarge(limit)
        return message

    return capped_receive


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def send_with(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with
