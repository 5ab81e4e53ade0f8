"""The channel manager keeps a started channel running: a long-running loop of it that ends
(an exception no handler foresaw, a cancel a library let out) has the channel stopped and
started again with backoff, never two loops at once (claw_ingress/channels/manager.py).

The adapter is a stand-in whose loop dies on purpose, since every way a real adapter's loop
was found to die is fixed in that adapter; the manager, the context and Redis are real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import httpx
import redis.asyncio as aioredis

from claw_ingress.channels.base import Channel, ChannelContext
from claw_ingress.channels.manager import ChannelManager
from claw_worker.config import Config
from claw_worker.config.reload import LiveConfig
from tests.fixtures.redis_server import RedisServer


class DyingLoopChannel(Channel):
    """Its first loop raises, its second is cancelled from inside, its third runs on."""

    name: ClassVar[str] = "telegram"  # a real config section

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.starts = self.stops = self.loops_running = 0

    async def start(self) -> None:
        self.starts += 1
        self.background(self._poll(self.starts), "poll")

    async def stop(self) -> None:
        self.stops += 1

    async def _poll(self, start: int) -> None:
        self.loops_running += 1
        try:
            await asyncio.sleep(0.05)
            if start == 1:
                raise RuntimeError("a bug no handler foresaw")
            if start == 2:
                raise asyncio.CancelledError  # as a library that lets a cancel out
            await asyncio.Event().wait()
        finally:
            self.loops_running -= 1

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        return None


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def run_managed(
    redis_server: RedisServer,
    channel_class: type[DyingLoopChannel],
    body: Callable[[ChannelManager, DyingLoopChannel], Awaitable[None]],
) -> None:
    """Run ``body`` with a real manager running one ``channel_class`` as "telegram"."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        http = httpx.AsyncClient()

        async def accept(_message: Any) -> Any:
            raise AssertionError("not used here")

        ctx = ChannelContext(LiveConfig(Config()), client, http, "replica-1", accept)
        manager, channel = ChannelManager(ctx), channel_class(ctx)
        try:
            manager.run("telegram", channel)
            await body(manager, channel)
        finally:
            await manager.stop()
            await http.aclose()
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_channel_whose_loop_ends_is_restarted_with_one_loop_at_a_time(
    redis_server: RedisServer,
) -> None:
    async def body(manager: ChannelManager, channel: DyingLoopChannel) -> None:
        await until(lambda: manager.get("telegram") is channel)
        await until(lambda: channel.starts == 2)  # after the exception, 1 s later
        assert manager.describe()["telegram"]["restarts"] == 1
        await until(lambda: channel.starts == 3 and manager.get("telegram") is channel)
        facts = manager.describe()["telegram"]
        assert facts["restarts"] == 2 and facts["started"] and facts["error"] is None
        assert channel.stops == 2  # stopped before each start again
        await until(lambda: channel.loops_running == 1)  # the third: one loop, not two
        await manager.stop()
        assert channel.loops_running == 0 and channel.stops == 3

    run_managed(redis_server, DyingLoopChannel, body)


class DiesOnce(DyingLoopChannel):
    async def start(self) -> None:
        await super().start()
        if self.starts == 2:
            await asyncio.sleep(3600)  # the second start hangs: the state can be read


def test_the_reason_a_loop_ended_is_kept_until_the_channel_runs_again(
    redis_server: RedisServer,
) -> None:
    """While the manager waits to start it again, the channel is not offered for sending,
    and its error names the loop and what ended it (``clawctl status`` shows it)."""

    async def body(manager: ChannelManager, channel: DyingLoopChannel) -> None:
        await until(lambda: channel.starts == 2)
        facts = manager.describe()["telegram"]
        assert not facts["started"] and manager.get("telegram") is None
        assert facts["error"] == "telegram-poll failed: RuntimeError('a bug no handler foresaw')"

    run_managed(redis_server, DiesOnce, body)
