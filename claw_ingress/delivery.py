"""Sending the fleet's replies out through the channels: once each, in order, within limits.

Workers put every reply (and the ``message`` tool's posts) on the outbound stream. One
ingress replica at a time reads it: the one holding the delivery lease
(``claw:delivery:leader``, renewed while it runs), as a member of one consumer group, so
entries are sent in stream order (a chat's messages never overtake each other, as they
could if several replicas split the stream) and each entry is acknowledged only once the
platform accepted the message. When the leader dies, another replica takes the lease after
``LEADER_TTL_MS``, first takes over every entry the old leader left pending, in order, then
reads on.

Per entry: the HTTP API's replies are skipped (HTTP callers wait on them through
``outbound.py``); a reply for a connection-bound channel (WebSocket, MaixCam) goes to the
replica that holds the chat's connection, forwarded through that replica's inbox stream;
everything else is queued to its chat. Each chat's queue is sent in order by a task of its
own, so a chat told to wait (a per-chat 429, a chat whose sends fail) holds back only its own
replies; ``parts.py`` sends each (split at the platform's limit, within the channel's rate,
429s waited out, the parts counted so that a redelivered entry resumes after its last part
and a message is never sent twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from claw_ingress.cancel import stop_if_cancelled
from claw_ingress.channels.base import Channel
from claw_ingress.parts import PartSender, Progress
from claw_worker import constants as k
from claw_worker.contract import INTERNAL_CHANNEL, Origin, OutboundMessage

log = structlog.get_logger(__name__)

# Answered to HTTP callers, or replies nobody receives (an internal message's
# acknowledgement, a cron job without a target): never sent anywhere.
NOT_DELIVERED = frozenset(
    {"api", "openai", INTERNAL_CHANNEL, *(o.value for o in Origin if o is not Origin.USER)}
)
CLAIM_IDLE_MS = 60_000  # an entry the leader itself left pending is tried again after this
LEADER_TTL_MS = 10_000
LEADER_RENEW_SEC = 3.0
CLAIM_EVERY_SEC = 15.0
READ_BLOCK_MS = 5_000
REDIS_RETRY_MAX_SEC = 30.0  # a delivery waiting for Redis to come back tries this often
UNMARKED_RETRY_SEC = 2.0  # a connection-bound reply whose chat has no mark: looked again
UNMARKED_TRIES = 15  # times, (30 s: past a holder's renewal, every CONNECTION_TTL_SEC / 3)


class Delivery:
    def __init__(
        self,
        client: aioredis.Redis,
        channel: Callable[[str], Channel | None],
        replica: str,
        *,
        wanted: Callable[[str], bool],
        claim_idle_ms: int = CLAIM_IDLE_MS,
        claim_every_sec: float = CLAIM_EVERY_SEC,
    ) -> None:
        self.redis = client
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_sec = claim_every_sec
        self.channel = channel  # the running adapter of a channel, or None
        self.wanted = wanted  # the channel is enabled here (it may be starting or failing)
        self.replica = replica
        # One queue per chat, sent by a task of its own while it holds entries: a chat's
        # replies go out in order, and a chat told to wait (a per-chat 429, a failing
        # chat) holds back only its own.
        self._queues: dict[tuple[str, str], deque[tuple[str, OutboundMessage, bool]]] = {}
        self.parts = PartSender(client)  # splitting, rate, retries, the delivered count
        self._busy: set[str] = set()  # entry ids queued or being sent here
        self._unmarked: dict[str, int] = {}  # entry id -> tries while its chat had no mark
        self._tasks: list[asyncio.Task[None]] = []
        self._senders: set[asyncio.Task[None]] = set()  # one per chat with entries queued
        self._leading = asyncio.Event()
        self.leader_ttl_ms = LEADER_TTL_MS

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    async def start(self) -> None:
        await self._make_group("$")
        for name, loop in (("outbound-lead", self._lead), ("outbound-group", self._read_group),
                           ("outbound-inbox", self._read_inbox),
                           ("outbound-claim", self._claim)):  # fmt: skip
            self._tasks.append(asyncio.create_task(_forever(name, loop, self._recover),
                                                   name=name))  # fmt: skip

    async def _make_group(self, start: str) -> None:
        """The consumer group, reading from ``start``, unless another replica made it."""
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it is there
            await self.redis.xgroup_create(k.OUTBOUND_STREAM, k.OUTBOUND_GROUP, id=start,
                                           mkstream=True)  # fmt: skip

    async def _recover(self, error: RedisError) -> None:
        """Make the consumer group again when Redis lost it (a restart without persistence,
        a flush, a failover to an empty replica): else no reply would go out until the
        ingress restarted. From the stream's start: what it holds was added since, and a
        message already delivered is marked so and not sent again."""
        if isinstance(error, ResponseError) and str(error).startswith("NOGROUP"):
            log.warning("outbound consumer group missing (Redis lost its data?): made again")
            await self._make_group("0")

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._senders]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queues.clear()  # what they held stays pending in the stream
        self._busy.clear()
        self._unmarked.clear()
        if self.leading:  # hand over at once instead of after the lease's TTL
            self._leading.clear()
            with contextlib.suppress(RedisError):
                await self.redis.eval(_RESIGN, 1, k.DELIVERY_LEADER, self.replica)

    # -- the lease ---------------------------------------------------------------------------

    async def _lead(self) -> None:
        """Take or renew the delivery lease; on taking it, first take over what the last
        leader left pending."""
        if self.leading:
            renewed = await self.redis.eval(
                _RENEW, 1, k.DELIVERY_LEADER, self.replica, self.leader_ttl_ms
            )
            if not renewed:
                log.warning("delivery lease lost", replica=self.replica)
                self._leading.clear()
        elif await self.redis.eval(_TAKE, 1, k.DELIVERY_LEADER, self.replica,
                                   self.leader_ttl_ms):  # fmt: skip
            log.info("delivering the outbound stream", replica=self.replica)
            await self._take_over()
            self._leading.set()
        await asyncio.sleep(LEADER_RENEW_SEC if self.leading else 1.0)

    async def _take_over(self) -> None:
        """Every entry pending in the group (the last leader's), oldest first."""
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                k.OUTBOUND_STREAM, k.OUTBOUND_GROUP, self.replica, 0, start_id=start, count=100
            )
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if fields and entry_id not in self._busy:
                    await self._route(entry_id, fields, from_inbox=False)
            if start in ("0-0", b"0-0"):
                return

    # -- reading ---------------------------------------------------------------------------

    async def _read_group(self) -> None:
        await self._leading.wait()
        found = await self.redis.xreadgroup(
            k.OUTBOUND_GROUP, self.replica, {k.OUTBOUND_STREAM: ">"}, count=100,
            block=READ_BLOCK_MS,
        )  # fmt: skip
        for _stream, entries in found or []:
            for entry_id, fields in entries:
                await self._route(entry_id, fields, from_inbox=False)

    async def _read_inbox(self) -> None:
        """Replies forwarded to this replica (it holds their connections); read from the
        start each time, as entries are deleted once handled."""
        inbox = k.replica_inbox_key(self.replica)
        found = await self.redis.xread({inbox: "0"}, count=100, block=READ_BLOCK_MS)
        for _stream, entries in found or []:
            for entry_id, fields in entries:
                if entry_id not in self._busy:
                    await self._route(entry_id, fields, from_inbox=True)
        if not found:
            return
        await asyncio.sleep(0.05)  # entries still being sent stay in the inbox meanwhile

    async def _claim(self) -> None:
        """Try again the entries left pending here (a platform that kept failing)."""
        await asyncio.sleep(self.claim_every_sec)
        if not self.leading:
            return
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                k.OUTBOUND_STREAM, k.OUTBOUND_GROUP, self.replica, self.claim_idle_ms,
                start_id=start, count=100,
            )  # fmt: skip
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if fields and entry_id not in self._busy:
                    await self._route(entry_id, fields, from_inbox=False)
            if start in ("0-0", b"0-0"):
                return

    # -- routing ---------------------------------------------------------------------------

    async def _route(self, entry_id: str, fields: dict[str, Any], *, from_inbox: bool) -> None:
        try:
            message = OutboundMessage.model_validate_json(fields["data"])
        except (KeyError, ValueError) as exc:
            log.error("bad outbound entry", entry_id=entry_id, error=str(exc))
            await self._ack(entry_id, from_inbox)
            return
        if message.channel in NOT_DELIVERED:
            await self._ack(entry_id, from_inbox)
            return
        channel = self.channel(message.channel)
        if channel is None:
            if not self.wanted(message.channel):
                log.warning("reply for a channel that is not enabled: dropped",
                            channel=message.channel, message_id=message.message_id)  # fmt: skip
                await self._ack(entry_id, from_inbox)
            # else: enabled but not running yet (starting, failing): left pending, claimed
            # and tried again later.
            return
        if channel.connection_bound and not from_inbox:
            holder = await self.redis.get(k.connection_key(message.channel, message.chat_id))
            if not holder and channel.holds(message.chat_id):
                # Ours, though Redis lost the mark (back empty, or away past its TTL).
                await channel.ctx.hold_connection(channel.name, message.chat_id)
                holder = self.replica
            if not holder and self._unmarked.get(entry_id, 0) < UNMARKED_TRIES:
                self._route_later(entry_id, fields)  # another replica's mark may come back
                return
            self._unmarked.pop(entry_id, None)
            if holder != self.replica:
                if holder:
                    await self.redis.xadd(k.replica_inbox_key(holder), {"data": fields["data"]})
                else:
                    log.warning("reply for a connection that is closed: dropped",
                                channel=message.channel, chat_id=message.chat_id,
                                message_id=message.message_id)  # fmt: skip
                await self._ack(entry_id, from_inbox)
                return
        self._busy.add(entry_id)
        chat = (channel.name, message.chat_id)
        queue = self._queues.get(chat)
        if queue is None:
            queue = self._queues[chat] = deque()
            task = asyncio.create_task(self._send_chat(chat, queue), name=f"send-{channel.name}")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        queue.append((entry_id, message, from_inbox))

    def _route_later(self, entry_id: str, fields: dict[str, Any]) -> None:
        """Route a connection-bound reply whose chat has no mark again in
        ``UNMARKED_RETRY_SEC``: a replica holding the connection renews its mark every
        ``CONNECTION_TTL_SEC / 3``, so a mark Redis lost comes back within that; only after
        ``UNMARKED_TRIES`` is the connection taken for closed."""
        self._unmarked[entry_id] = self._unmarked.get(entry_id, 0) + 1
        self._busy.add(entry_id)

        async def again() -> None:
            await asyncio.sleep(UNMARKED_RETRY_SEC)
            self._busy.discard(entry_id)
            if not self.leading:  # the new leader took the entry over with the others
                self._unmarked.pop(entry_id, None)
                return
            try:
                await self._route(entry_id, fields, from_inbox=False)
            except RedisError as exc:  # left pending: claimed again later
                self._unmarked.pop(entry_id, None)
                log.warning("outbound delivery: redis error", task="route-later",
                            error=str(exc))  # fmt: skip

        task = asyncio.create_task(again(), name="route-later")
        self._senders.add(task)  # cancelled by stop, as the chats' senders are
        task.add_done_callback(self._senders.discard)

    async def _ack(self, entry_id: str, from_inbox: bool) -> None:
        if from_inbox:
            await self.redis.xdel(k.replica_inbox_key(self.replica), entry_id)
        else:
            await self.redis.xack(k.OUTBOUND_STREAM, k.OUTBOUND_GROUP, entry_id)

    # -- sending ---------------------------------------------------------------------------

    async def _send_chat(
        self, chat: tuple[str, str], queue: deque[tuple[str, OutboundMessage, bool]]
    ) -> None:
        """Send one chat's queued entries in order, then end (a later entry starts anew)."""
        try:
            while queue:
                entry_id, message, from_inbox = queue.popleft()
                try:
                    await self._send_entry(chat[0], entry_id, message, from_inbox)
                except RedisError as exc:  # the entry stays pending: claimed again later
                    log.warning("outbound delivery: redis error", task=f"send-{chat[0]}",
                                error=str(exc))  # fmt: skip
                except Exception as exc:  # never let one bad entry stop the chat's replies
                    log.exception("outbound delivery failed", task=f"send-{chat[0]}",
                                  error=repr(exc))  # fmt: skip
                finally:
                    self._busy.discard(entry_id)
        finally:
            if self._queues.get(chat) is queue:
                del self._queues[chat]  # (no await since the loop saw it empty)

    async def _send_entry(
        self, name: str, entry_id: str, message: OutboundMessage, from_inbox: bool
    ) -> None:
        """Deliver one entry and acknowledge it. Redis out of reach (a restart, a failover)
        is waited out here, backing off to ``REDIS_RETRY_MAX_SEC``, rather than left to the
        reclaim a minute later, for as long as this replica still has the entry to send
        (it leads, or the entry is in its inbox); the parts it sent meanwhile are not sent
        again, though Redis could not count them."""
        progress, wait = Progress(), 1.0
        while True:
            channel = self.channel(name)
            if channel is None:
                return  # stopped meanwhile: the entry stays pending
            try:
                if await self.parts.deliver(channel, message, progress):
                    await self._ack(entry_id, from_inbox)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if not (from_inbox or self.leading):
                    raise  # another replica leads: it takes the entry over
                log.warning("outbound delivery: redis unavailable; retrying",
                            task=f"send-{name}", error=str(exc), retry_in=wait)  # fmt: skip
            await asyncio.sleep(wait)
            wait = min(wait * 2, REDIS_RETRY_MAX_SEC)


# KEYS: lease   ARGV: replica, ttl_ms. Renew the lease only if it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease   ARGV: replica, ttl_ms. Take the lease if it is free, or still ours (from a
# take-over that failed before this replica began leading).
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: lease   ARGV: replica. Give the lease up if it is ours.
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def _forever(
    name: str,
    step: Callable[[], Awaitable[None]],
    recover: Callable[[RedisError], Awaitable[None]],
) -> None:
    """Run ``step`` again and again; Redis trouble is logged, handed to ``recover`` and
    waited out."""
    while True:
        stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except RedisError as exc:
            log.warning("outbound delivery: redis error", task=name, error=str(exc))
            with contextlib.suppress(RedisError):
                await recover(exc)
            await asyncio.sleep(1.0)
        except Exception as exc:  # never let one bad entry stop delivery
            log.exception("outbound delivery failed", task=name, error=repr(exc))
            await asyncio.sleep(1.0)
