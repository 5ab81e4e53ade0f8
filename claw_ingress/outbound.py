"""Reads replies from the outbound stream and hands them to whoever waits for them.

HTTP callers that asked to ``wait`` register a future by message_id; channel adapters
(later issues) subscribe to deliver replies to their platforms.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from claw_ingress.cancel import stop_if_cancelled
from claw_worker import constants as k
from claw_worker.contract import OutboundMessage

log = structlog.get_logger(__name__)


class OutboundReader:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._waiters: dict[str, list[asyncio.Future[OutboundMessage]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbound-reader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, message_id: str) -> asyncio.Future[OutboundMessage]:
        fut: asyncio.Future[OutboundMessage] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_id, []).append(fut)
        return fut

    def forget(self, message_id: str, fut: asyncio.Future[OutboundMessage]) -> None:
        futs = self._waiters.get(message_id, [])
        if fut in futs:
            futs.remove(fut)
        if not futs:
            self._waiters.pop(message_id, None)

    def _deliver(self, reply: OutboundMessage) -> None:
        for fut in self._waiters.pop(reply.message_id, []):
            if not fut.done():
                fut.set_result(reply)

    async def _run(self) -> None:
        last_id = "$"
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            try:
                entries = await self.redis.xread(
                    {k.OUTBOUND_STREAM: last_id}, block=5000, count=500
                )
            except RedisError as exc:
                log.warning("outbound stream read failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            for _stream, items in entries or []:
                for entry_id, fields in items:
                    last_id = entry_id
                    try:
                        self._deliver(OutboundMessage.model_validate_json(fields["data"]))
                    except (KeyError, ValueError) as exc:
                        log.error("bad outbound entry", entry_id=entry_id, error=str(exc))
