"""Reads replies from the outbound stream and hands them to HTTP callers that wait for them.

A caller registers a future by message_id (``expect``). The reader follows the stream from
its newest entry at start-up by entry id, never by ``$`` (which would skip whatever came
between one blocking read's end and the next), so while it reads without an error it hands
over every reply. An error may have cost entries (the stream trimmed, Redis restarted): it
counts as a gap, and a waiter that saw one (``may_have_missed``) looks in the message
record.
(Channels deliver through the consumer group in ``delivery.py``, not here.)
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
        self._gaps = 0  # read errors and the start: replies may have been missed
        self._marks: dict[str, int] = {}  # message_id -> the gaps when it was expected
        self._following = False

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
        self._marks.setdefault(message_id, self._gaps)
        return fut

    def may_have_missed(self, message_id: str) -> bool:
        """Whether a reply to ``message_id`` published since it was expected may not have
        been handed over: the reader had a gap meanwhile, or is not following the stream."""
        running = self._task is not None and not self._task.done()
        return not (self._following and running) or self._gaps != self._marks.get(message_id)

    def forget(self, message_id: str, fut: asyncio.Future[OutboundMessage]) -> None:
        futs = self._waiters.get(message_id, [])
        if fut in futs:
            futs.remove(fut)
        if not futs:
            self._waiters.pop(message_id, None)
            self._marks.pop(message_id, None)

    def _deliver(self, reply: OutboundMessage) -> None:
        self._marks.pop(reply.message_id, None)
        for fut in self._waiters.pop(reply.message_id, []):
            if not fut.done():
                fut.set_result(reply)

    async def _tail(self) -> str:
        """The id of the stream's newest entry ("0-0" when it has none)."""
        newest = await self.redis.xrevrange(k.OUTBOUND_STREAM, count=1)
        return newest[0][0] if newest else "0-0"

    async def _run(self) -> None:
        last_id: str | None = None
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            try:
                if last_id is None:
                    last_id = await self._tail()
                    self._gaps += 1  # a reply before the tail went by: for earlier waiters
                    self._following = True
                entries = await self.redis.xread(
                    {k.OUTBOUND_STREAM: last_id}, block=5000, count=500
                )
            except RedisError as exc:
                self._gaps += 1
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
