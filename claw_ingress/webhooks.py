"""``/webhooks/<channel>/...``: the routes of channels that push, found at request time.

A channel enabled by a config reload gets its webhook without a restart: each request looks
up the started adapter and hands the request to the routes it declares (cached per adapter
instance). A channel that is not enabled, or not started yet, answers 404 or 503.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.routing import Router
from starlette.types import Receive, Scope, Send

from claw_ingress.channels.base import Channel


class WebhookRouter:
    def __init__(self) -> None:
        self._routers: dict[int, tuple[Channel, Router]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = scope["app"].state.channels
        root = scope.get("root_path", "")  # ".../webhooks", as the Mount set it
        rest = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        name = rest.lstrip("/").partition("/")[0]
        channel = manager.get(name)
        if channel is None:
            status = 503 if manager.wanted(name) else 404
            reason = "is starting or failing" if status == 503 else "is not enabled"
            response = JSONResponse({"error": f"channel {name!r} {reason}"}, status_code=status)
            await response(scope, receive, send)
            return
        cached = self._routers.get(id(channel))
        if cached is None or cached[0] is not channel:
            cached = self._routers[id(channel)] = (channel, Router(routes=channel.routes()))
        # The channel's routes match the path below /webhooks/<name> (Starlette routes on
        # the path less root_path); /webhooks/<name> itself is its "/", answered at once
        # (platforms do not follow a redirect to the slashed URL).
        child = dict(scope, root_path=f"{root}/{name}")
        if rest.strip("/") == name:
            child["path"] = f"{root}/{name}/"
        await cached[1](child, receive, send)
