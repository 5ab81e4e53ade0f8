"""Bearer-token check for the gateway's /api/* routes (pure ASGI, constant-time compare).

The token is read from the live config on each request, so setting or changing
``gateway.token`` takes effect with a reload, without a restart.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from claw_ingress.errors import error_payload
from claw_worker.config.reload import LiveConfig


def bearer_token(header: bytes) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header, or b"": the scheme's name
    is case-insensitive (RFC 9110), and clients do send ``bearer``."""
    scheme, _, token = header.partition(b" ")
    return token if scheme.lower() == b"bearer" else b""


class BearerAuth:
    def __init__(self, app: ASGIApp, live: LiveConfig, protected_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.live = live
        self.prefixes = protected_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.live.config.gateway.token
        if token and scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            given = bearer_token(dict(scope["headers"]).get(b"authorization", b""))
            if not hmac.compare_digest(given, token.encode()):
                body = json.dumps(error_payload(scope["path"], 401, "missing or wrong bearer token",
                                                code="invalid_api_key")).encode()  # fmt: skip
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
