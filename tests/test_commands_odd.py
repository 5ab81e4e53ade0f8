"""Slash commands given odd arguments, answered by the registry against a real Redis."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.commands import CommandContext, run_command
from claw_worker.config.schema import Config
from tests.fixtures.redis_server import RedisServer

SESSION = "api:odd"


def ask(server: RedisServer, text: str) -> str:
    async def run() -> str | None:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            return await run_command(CommandContext(client, Config(), SESSION), text)
        finally:
            await client.aclose()

    reply = asyncio.run(run())
    assert reply is not None
    return reply


def test_latest_is_a_word_in_any_casing(redis_server: RedisServer) -> None:
    # Commands and subcommands are taken in any casing ("/STATUS RUN"); "latest" was not:
    # "No run LATEST" though the session had one.
    client = redis_server.client()
    client.hset(k.run_key("run-1-7"), mapping={"run_id": "run-1-7", "session_key": SESSION,
                                               "status": "done", "queued_at": 1.0})  # fmt: skip
    client.set(k.latest_run_key(SESSION), "run-1-7")
    for text in ("/STATUS RUN LATEST", "/status run Latest", "/status wait LATEST 1"):
        assert ask(redis_server, text).startswith("run-1-7: done"), text


def test_a_huge_argument_is_not_echoed_whole(redis_server: RedisServer) -> None:
    # Before, each reply quoted the argument whole: 100,000 characters back, 25 chat messages.
    huge = "x" * 100_000
    for text in (f"/status run {huge}", f"/status wait {huge}", f"/no{huge}"):
        reply = ask(redis_server, text)
        assert len(reply) < 2_000 and "xxx…" in reply, text[:20]
