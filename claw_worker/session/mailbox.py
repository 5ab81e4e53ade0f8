"""The session mailbox (actor pattern): strict FIFO per session on Redis lists.

Celery carries only a wake-up task ``drain(session_key)``; the order of a session's messages
lives here. See docs/architecture.md for the protocol; the Lua is in mailbox_scripts.py.

The ingress uses :class:`AsyncMailbox` (enqueue and status lookups); workers use
:class:`Mailbox` (lease, take, complete, release) from their threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker import mailbox_scripts as lua
from claw_worker.contract import InboundMessage, MessageStatus, OutboundMessage
from claw_worker.runs import new_run_id, queue_run

DEFAULT_MESSAGE_TTL_SEC = 7 * 24 * 3600
DEFAULT_RUN_TTL_SEC = 1800  # agents.defaults.runtime_control.run_state_ttl_seconds
DEFAULT_RUN_MAX = 500  # ... and run_state_max
OUTBOUND_MAXLEN = 100_000


@dataclass(frozen=True)
class Enqueued:
    stored: bool  # False: this message_id was stored before (a duplicate, dropped)
    run_id: str  # the message's run, in state "queued" until a worker takes it


@dataclass(frozen=True)
class Taken:
    message: InboundMessage
    recovered: bool  # left in flight by a holder that died: this is at least its 2nd run


class LeaseLost(Exception):
    """The session's lease expired or was taken over; stop without finishing the message."""


def message_record(raw: dict[str, str], message_id: str, session_key: str) -> dict[str, Any]:
    """The public view of a stored message record."""
    return {
        "message_id": message_id,
        "session_key": session_key,
        "status": raw.get("status", MessageStatus.QUEUED.value),
        "reply": raw.get("reply") or None,
        "error": raw.get("error") or None,
        "attempts": int(raw.get("attempts") or 0),
        "run_id": raw.get("run_id") or None,
    }


class AsyncMailbox:
    """Enqueue side, for the asyncio ingress: one round trip per message."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_sec: int = DEFAULT_MESSAGE_TTL_SEC,
        run_ttl_sec: int = DEFAULT_RUN_TTL_SEC,
        run_max: int = DEFAULT_RUN_MAX,
    ):
        self.redis = client
        self.ttl_sec = ttl_sec
        self.run_ttl_sec = run_ttl_sec
        self.run_max = run_max
        self._enqueue = client.register_script(lua.ENQUEUE)

    async def enqueue(self, message: InboundMessage) -> Enqueued:
        """Store the message and its queued run (a duplicate message_id is dropped).

        One pipeline: the id index, the dirty mark and the run record are global keys, the
        message record, the list and the session's latest run are in the session's slot and
        are written together by one script.

        After a Redis restart the pool may hand out a connection the old server closed;
        the pipeline is then sent once more on a fresh one. That is safe: every command in
        it is idempotent for the same message (ENQUEUE dedupes by message_id).
        """
        run_id = new_run_id()
        try:
            stored, known = await self._enqueue_once(message, run_id)
        except (redis.ConnectionError, redis.TimeoutError):
            stored, known = await self._enqueue_once(message, run_id)
        if not stored and known != run_id:  # (equal: our own first try did get through)
            # The run recorded in the same trip belongs to nothing: a second trip, for
            # duplicates only, removes it.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(k.run_key(run_id))
                pipe.zrem(k.RUNS_INDEX, run_id)
                await pipe.execute()
        return Enqueued(stored, known)

    async def _enqueue_once(self, message: InboundMessage, run_id: str) -> tuple[bool, str]:
        sk, mid = message.session_key, message.message_id
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(k.message_index_key(mid), sk, ex=self.ttl_sec)
            pipe.zadd(k.DIRTY_SESSIONS, {sk: now})
            queue_run(pipe, run_id, sk, mid, ttl_sec=self.run_ttl_sec, max_runs=self.run_max)
            await self._enqueue(
                keys=[k.message_key(sk, mid), k.mailbox_key(sk), k.latest_run_key(sk)],
                args=[
                    message.model_dump_json(),
                    now,
                    self.ttl_sec,
                    message.channel,
                    message.chat_id,
                    run_id,
                    self.run_ttl_sec,
                ],
                client=pipe,
            )
            results = await pipe.execute()
        stored, known = results[-1]
        return bool(int(stored)), str(known or "")

    async def get_message(self, message_id: str) -> dict[str, Any] | None:
        try:
            return await self._get_message_once(message_id)
        except (redis.ConnectionError, redis.TimeoutError):
            return await self._get_message_once(message_id)  # a stale pooled connection

    async def _get_message_once(self, message_id: str) -> dict[str, Any] | None:
        session_key = await self.redis.get(k.message_index_key(message_id))
        if session_key is None:
            return None
        raw = await self.redis.hgetall(k.message_key(session_key, message_id))
        if not raw:
            return None
        return message_record(raw, message_id, session_key)


class Mailbox:
    """Worker side: lease a session, take its messages in order, finish them, release."""

    def __init__(self, client: redis.Redis, *, lease_ms: int = 30_000):
        self.redis = client
        self.lease_ms = lease_ms
        self._take = client.register_script(lua.TAKE)
        self._complete = client.register_script(lua.COMPLETE)
        self._renew = client.register_script(lua.RENEW)
        self._release = client.register_script(lua.RELEASE)
        self._probe = client.register_script(lua.PROBE)
        self._forget = client.register_script(lua.FORGET_IF_UNCHANGED)
        self._publish = client.register_script(lua.PUBLISH_ONCE)

    def acquire(self, session_key: str, token: str) -> bool:
        return bool(self.redis.set(k.lease_key(session_key), token, nx=True, px=self.lease_ms))

    def renew(self, session_key: str, token: str) -> bool:
        return bool(self._renew(keys=[k.lease_key(session_key)], args=[token, self.lease_ms]))

    def release(self, session_key: str, token: str) -> int:
        """Drop the lease; the number of messages still waiting (send a drain if > 0)."""
        keys = [k.lease_key(session_key), k.mailbox_key(session_key), k.inflight_key(session_key)]
        return int(self._release(keys=keys, args=[token]))

    def take(self, session_key: str, token: str) -> Taken | None:
        keys = [k.lease_key(session_key), k.inflight_key(session_key), k.mailbox_key(session_key)]
        result = self._take(keys=keys, args=[token])
        if not result:
            return None
        if int(result[0]) == -1:
            raise LeaseLost(session_key)
        return Taken(InboundMessage.model_validate_json(result[1]), recovered=bool(int(result[0])))

    def record(self, message: InboundMessage) -> tuple[dict[str, str], bool]:
        """The message's record, and whether its reply was already published (one trip)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.message_key(message.session_key, message.message_id))
            pipe.exists(k.reply_sent_key(message.message_id))
            record, sent = pipe.execute()
        return record, bool(sent)

    def mark_running(self, message: InboundMessage) -> int:
        """Count this attempt; returns the attempt number (1 for the first run)."""
        key = k.message_key(message.session_key, message.message_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(
                key, mapping={"status": MessageStatus.RUNNING.value, "started_at": time.time()}
            )
            attempts, _ = pipe.execute()
        return int(attempts)

    def defer(self, message: InboundMessage, *, not_before: float, error: str) -> None:
        """Leave the message in flight for a retry no earlier than ``not_before``."""
        key = k.message_key(message.session_key, message.message_id)
        self.redis.hset(
            key,
            mapping={
                "status": MessageStatus.QUEUED.value,
                "not_before": not_before,
                "error": error,
            },
        )

    def stage_reply(self, message: InboundMessage, status: MessageStatus, text: str) -> None:
        """Keep the reply in the record before publishing it, for a holder that dies between."""
        key = k.message_key(message.session_key, message.message_id)
        self.redis.hset(key, mapping={"reply": text, "final_status": status.value})

    def publish(self, reply: OutboundMessage, *, ttl_sec: int = DEFAULT_MESSAGE_TTL_SEC) -> bool:
        """Put the reply on the outbound stream once per message_id (dedupe on re-runs)."""
        keys = [k.reply_sent_key(reply.message_id), k.OUTBOUND_STREAM]
        return bool(
            self._publish(keys=keys, args=[reply.model_dump_json(), ttl_sec, OUTBOUND_MAXLEN])
        )

    def complete(
        self,
        message: InboundMessage,
        token: str,
        status: MessageStatus,
        reply: str,
        error: str = "",
    ) -> None:
        sk = message.session_key
        keys = [k.lease_key(sk), k.inflight_key(sk), k.message_key(sk, message.message_id)]
        if (
            int(self._complete(keys=keys, args=[token, status.value, reply, time.time(), error]))
            < 0
        ):
            raise LeaseLost(sk)

    # -- the sweeper's view ---------------------------------------------------------------

    def stale_dirty_sessions(self, older_than: float, limit: int = 1000) -> list[tuple[str, float]]:
        return self.redis.zrangebyscore(
            k.DIRTY_SESSIONS, "-inf", older_than, start=0, num=limit, withscores=True
        )

    def probe(self, session_key: str) -> tuple[bool, int]:
        keys = [k.lease_key(session_key), k.mailbox_key(session_key), k.inflight_key(session_key)]
        held, waiting = self._probe(keys=keys)
        return bool(held), int(waiting)

    def touch_dirty(self, session_key: str) -> None:
        self.redis.zadd(k.DIRTY_SESSIONS, {session_key: time.time()}, xx=True)

    def forget_if_unchanged(self, session_key: str, score: float) -> bool:
        return bool(self._forget(keys=[k.DIRTY_SESSIONS], args=[session_key, repr(score)]))
