"""The enqueue side of the session mailbox, for the asyncio ingress.

One round trip stores a message at the tail of its session's list, marks the session dirty,
records the message's queued run and wakes the session (the drain task pushed by the same
script, see ``wakeup.py``); the worker side (``mailbox.py``) drains it. This
module imports only redis, the contract, the constants and the run helpers, so the ingress
stays light.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.contract import InboundMessage, MessageStatus
from claw_worker.session import scripts as lua
from claw_worker.session.runs import new_run_id, queue_run
from claw_worker.session.wakeup import drain_message

DEFAULT_MESSAGE_TTL_SEC = 7 * 24 * 3600
DEFAULT_RUN_TTL_SEC = 1800  # agents.defaults.runtime_control.run_state_ttl_seconds
DEFAULT_RUN_MAX = 500  # ... and run_state_max
# A queued drain's mark outlives any normal wait in the queue; if a drain was lost, the
# next message after this pushes another (and the sweeper covers the quiet case).
DRAIN_MARK_TTL_SEC = 120


@dataclass(frozen=True)
class Enqueued:
    stored: bool  # False: this message_id was stored before (a duplicate, dropped)
    run_id: str  # the message's run, in state "queued" until a worker takes it


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


def stage_enqueue(
    pipe: Any, script: Any, message: InboundMessage, run_id: str, *, ttl_sec: int,
    run_ttl_sec: int, run_max: int,
) -> Any:  # fmt: skip
    """Buffer the commands that store ``message`` on ``pipe`` (the ENQUEUE script's answer
    is the pipeline's last). With an asyncio pipeline, await what this returns: queuing
    the script on one is a coroutine."""
    sk, mid = message.session_key, message.message_id
    now = time.time()
    pipe.set(k.message_index_key(mid), sk, ex=ttl_sec)
    pipe.zadd(k.DIRTY_SESSIONS, {sk: now})
    queue_run(pipe, run_id, sk, mid, ttl_sec=run_ttl_sec, max_runs=run_max)
    keys = [k.message_key(sk, mid), k.mailbox_key(sk), k.latest_run_key(sk)]
    return script(
        keys=[*keys, k.drain_queued_key(sk), k.QUEUE_SESSIONS],
        args=[
            message.model_dump_json(), now, ttl_sec, message.channel, message.chat_id,
            run_id, run_ttl_sec, drain_message(sk), DRAIN_MARK_TTL_SEC,
        ],
        client=pipe,
    )  # fmt: skip


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
        async with self.redis.pipeline(transaction=False) as pipe:
            await stage_enqueue(pipe, self._enqueue, message, run_id, ttl_sec=self.ttl_sec,
                                run_ttl_sec=self.run_ttl_sec, run_max=self.run_max)  # fmt: skip
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
