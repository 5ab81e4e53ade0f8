"""The worker side of the session mailbox (actor pattern): strict FIFO per session.

Celery carries only a wake-up task ``drain(session_key)``; the order of a session's messages
lives in Redis lists. See docs/architecture.md for the protocol; the Lua is in
``scripts.py``, the enqueue side (the ingress's) in ``enqueue.py``. Workers use
:class:`Mailbox` (lease, take, complete, release) from their threads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
import structlog
from pydantic import ValidationError

from claw_worker import constants as k
from claw_worker.contract import InboundMessage, MessageStatus, OutboundMessage
from claw_worker.session import scripts as lua
from claw_worker.session.enqueue import DEFAULT_MESSAGE_TTL_SEC

log = structlog.get_logger(__name__)
DEAD_LETTERS_KEPT = 100  # per session, the newest


@dataclass(frozen=True)
class Taken:
    message: InboundMessage
    recovered: bool  # left in flight by a holder that died: this is at least its 2nd run


class LeaseLost(Exception):
    """The session's lease expired or was taken over; stop without finishing the message."""


class Mailbox:
    """Worker side: lease a session, take its messages in order, finish them, release."""

    def __init__(self, client: redis.Redis, *, lease_ms: int = 30_000):
        self.redis = client
        self.lease_ms = lease_ms
        self._take = client.register_script(lua.TAKE)
        self._complete = client.register_script(lua.COMPLETE)
        self._set_aside = client.register_script(lua.SET_ASIDE)
        self._renew = client.register_script(lua.RENEW)
        self._release = client.register_script(lua.RELEASE)
        self._probe = client.register_script(lua.PROBE)
        self._forget = client.register_script(lua.FORGET_IF_UNCHANGED)
        self._publish = client.register_script(lua.PUBLISH_ONCE)

    def drain_started(self, session_key: str) -> None:
        """Clear the session's drain-queued mark (the enqueue script's wake-up)."""
        self.redis.delete(k.drain_queued_key(session_key))

    def acquire(self, session_key: str, token: str) -> bool:
        return bool(self.redis.set(k.lease_key(session_key), token, nx=True, px=self.lease_ms))

    def renew(self, session_key: str, token: str) -> bool:
        return bool(self._renew(keys=[k.lease_key(session_key)], args=[token, self.lease_ms]))

    def release(self, session_key: str, token: str) -> int:
        """Drop the lease; the number of messages still waiting (send a drain if > 0)."""
        keys = [k.lease_key(session_key), k.mailbox_key(session_key), k.inflight_key(session_key)]
        return int(self._release(keys=keys, args=[token]))

    def take(self, session_key: str, token: str) -> Taken | None:
        """The next message, the one left in flight first. An entry that is not a message
        this worker can read is set aside (a dead letter, logged): left in flight, it would
        come first again on every drain and hold the session up for good."""
        keys = [k.lease_key(session_key), k.inflight_key(session_key), k.mailbox_key(session_key)]
        while True:
            result = self._take(keys=keys, args=[token])
            if not result:
                return None
            if int(result[0]) == -1:
                raise LeaseLost(session_key)
            try:
                message = InboundMessage.model_validate_json(result[1])
            except ValidationError as exc:
                self._put_aside(session_key, token, result[1], exc)
                continue
            return Taken(message, recovered=bool(int(result[0])))

    def _put_aside(self, session_key: str, token: str, entry: str, exc: ValidationError) -> None:
        # Its problems, not its text (the entry may hold a user's words).
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors()
        )[:500]
        message_id = _named_id(entry)
        keys = [k.lease_key(session_key), k.inflight_key(session_key),
                k.dead_letter_key(session_key), k.message_key(session_key, message_id)]  # fmt: skip
        error = f"this worker cannot read the stored message ({problems})"
        args = [token, entry, DEFAULT_MESSAGE_TTL_SEC, DEAD_LETTERS_KEPT, time.time(), error]
        if int(self._set_aside(keys=keys, args=args)) < 0:
            raise LeaseLost(session_key)
        log.error("unreadable mailbox entry set aside", session_key=session_key,
                  message_id=message_id, dead_letters=k.dead_letter_key(session_key),
                  entry_bytes=len(entry), problems=problems)  # fmt: skip

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
            self._publish(keys=keys, args=[reply.model_dump_json(), ttl_sec, k.OUTBOUND_MAXLEN])
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


def _named_id(entry: str) -> str:
    """The message id an unreadable entry names, or "" (its record is then left alone)."""
    try:
        found = json.loads(entry).get("message_id")
    except (ValueError, AttributeError):
        return ""
    return found if isinstance(found, str) and 0 < len(found) <= 128 else ""
