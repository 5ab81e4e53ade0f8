"""The floor of ``bench.accept``: a bare Starlette app on uvicorn (uvloop, httptools).

``python -m bench.floor --port N --redis URL``. Each route the accept benchmark loads
(``/api/message``, ``/v1/chat/completions``, ``/webhooks/whatsapp/``) reads the body, parses
it as JSON, takes the session it names and stores the raw body with one Lua call (RPUSH onto
the session's list, and a counter the benchmark reads to check nothing was lost), then
answers 202 with a message id. No middleware, no checks, no logging: the least a Python
server on this stack can do per stored message, which the ingress is measured against.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

COUNTER = "bench:floor:stored"
# KEYS: the session's list, the counter   ARGV: the body
STORE = """
redis.call('RPUSH', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[2])
"""


def session_of(path: str, data: Any) -> str:
    """The session a body names, read as the ingress reads it (per route)."""
    if path == "/api/message":
        return str(data.get("session", "api:default"))
    if path == "/v1/chat/completions":
        return f"openai:{data.get('user', '')}"
    message = data["entry"][0]["changes"][0]["value"]["messages"][0]
    return f"whatsapp:{message['from']}"


def create_app(redis_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(redis_url, max_connections=2048)
        app.state.store = client.register_script(STORE)
        yield
        await client.aclose()

    async def store(request: Request) -> JSONResponse:
        body = await request.body()
        session = session_of(request.url.path, json.loads(body))
        await request.app.state.store(keys=[f"bench:floor:{session}", COUNTER], args=[body])
        return JSONResponse({"message_id": uuid.uuid4().hex, "status": "queued"}, 202)

    paths = ("/api/message", "/v1/chat/completions", "/webhooks/whatsapp/")
    return Starlette(routes=[Route(p, store, methods=["POST"]) for p in paths], lifespan=lifespan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", required=True, help="redis://host:port/db")
    args = p.parse_args()
    uvicorn.run(create_app(args.redis), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", backlog=2048, log_level="warning", access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
