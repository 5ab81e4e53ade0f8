"""Slash commands answered out of band by the ingress: they must not wait behind the
session's queue (``/stop`` ends the reply that the queue is waiting on)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from claw_worker.cancel import request_stop
from claw_worker.config import Config

OutOfBand = Callable[[aioredis.Redis, Config, str], Awaitable[str]]


async def stop(client: aioredis.Redis, config: Config, session_key: str) -> str:
    await request_stop(client, session_key)
    return config.agents.defaults.texts.stop_requested


# name -> handler; everything else goes through the session's mailbox.
OUT_OF_BAND: dict[str, OutOfBand] = {"/stop": stop}


def out_of_band_command(text: str) -> OutOfBand | None:
    words = text.strip().split(maxsplit=1)
    if not words:
        return None
    # "/stop@MyBot" is how Telegram addresses a command to one bot in a group.
    return OUT_OF_BAND.get(words[0].split("@", 1)[0].lower())
