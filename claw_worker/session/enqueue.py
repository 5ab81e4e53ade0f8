"""The enqueue side of the session mailbox, for the asyncio ingress (and ``submit.py``).

One script call (ENQUEUE, ``scripts.py``) stores a message at the tail of its session's
list, indexes it by id, marks the session dirty, records the message's queued run and wakes
the session (the drain task pushed by the same script, see ``wakeup.py``); the worker side
(``mailbox.py``) drains it. This module imports only redis, the contract, the constants and
the run helpers, so the ingress stays light.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.contract import InboundMessage, MessageStatus
from claw_worker.session import scripts as lua
from claw_worker.session.runs import new_run_id
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


def enqueue_call(
    message: InboundMessage, run_id: str, *, ttl_sec: int, run_ttl_sec: int, run_max: int
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of the ENQUEUE script that stores ``message`` (scripts.py)."""
    sk, mid = message.session_key, message.message_id
    keys = [
        k.message_key(sk, mid), k.mailbox_key(sk), k.latest_run_key(sk), k.drain_queued_key(sk),
        k.QUEUE_SESSIONS, k.message_index_key(mid), k.DIRTY_SESSIONS, k.run_key(run_id),
        k.RUNS_INDEX,
    ]  # fmt: skip
    args = [
        message.model_dump_json(), time.time(), ttl_sec, message.channel, message.chat_id,
        run_id, run_ttl_sec, drain_message(sk), DRAIN_MARK_TTL_SEC, sk, mid, -run_max - 1,
    ]  # fmt: skip
    return keys, args


def stage_enqueue(
    pipe: Any, script: Any, message: InboundMessage, run_id: str, *, ttl_sec: int,
    run_ttl_sec: int, run_max: int,
) -> Any:  # fmt: skip
    """Buffer the script call that stores ``message`` on ``pipe`` (its answer is the
    pipeline's last). With an asyncio pipeline, await what this returns: queuing the script
    on one is a coroutine."""
    keys, args = enqueue_call(message, run_id, ttl_sec=ttl_sec, run_ttl_sec=run_ttl_sec,
                              run_max=run_max)  # fmt: skip
    return script(keys=keys, args=args, client=pipe)


# A batch is sent once this many commands wait, without waiting for the end of the loop's
# turn: Redis runs the first commands while the ingress parses the next requests (at 50
# connections the ingress then spends the whole core, not ~90% of it, waiting on waves).
BATCH_MAX = 16


class HiredisPacking:
    """A redis-py asyncio connection mixin that packs commands with hiredis (C) instead of
    redis-py's pure-Python packer: ~2 µs instead of ~10 for the ENQUEUE call's 24
    arguments. The same bytes (the command name split at spaces as redis-py does; str, bytes,
    int and float arguments); anything else is refused with redis-py's DataError."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis.DataError(str(exc)) from None


def batch_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client of ``client``'s server for :class:`Coalescer` batches: commands packed by
    hiredis, and no socket timeout per send and per reply (redis-py wraps each send in a
    task and each reply in a timer): the batch has one deadline for all of it."""
    pool = client.connection_pool
    base = pool.connection_class
    packed = type(f"Packed{base.__name__}", (HiredisPacking, base), {})
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}
    own = aioredis.ConnectionPool(connection_class=packed, max_connections=pool.max_connections,
                                  **kwargs)  # fmt: skip
    return aioredis.Redis(connection_pool=own)


class Coalescer:
    """Redis commands that concurrent callers issue in one turn of the event loop, sent
    together in one pipeline: one connection from the pool, one write, the replies read in a
    row. Under load a command then costs the process ~20 µs instead of the ~50 (at 50
    concurrent requests) to ~100 µs (at 400) of a call of its own through redis-py (pool
    lock, retry wrapper, timeouts, a wake-up per reply). Each caller gets its own reply, or
    its own error: a command that fails does not fail the others. A batch that takes longer
    than ``timeout_sec`` fails its callers with redis' TimeoutError (its connection is
    dropped, as redis-py drops one whose read was interrupted)."""

    def __init__(self, client: aioredis.Redis, timeout_sec: float | None = None) -> None:
        self.redis = batch_client(client)
        pool_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self.timeout_sec = timeout_sec if timeout_sec is not None else pool_timeout
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # referenced until done

    async def aclose(self) -> None:
        await self.redis.aclose()

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (as ``execute_command`` takes it); await the reply."""
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self._queued.append((args, future))
        if len(self._queued) >= BATCH_MAX:
            self._flush()
        return future

    def _flush(self) -> None:
        if not self._queued:
            return
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            try:
                async with asyncio.timeout(self.timeout_sec):
                    replies = await self._replies(batch)
            except TimeoutError:
                raise redis.TimeoutError(f"no reply from Redis in {self.timeout_sec:g}s") from None
        except Exception as exc:  # the connection failed: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:  # shutting down
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up waiting (the command ran all the same)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _replies(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> list[Any]:
        """The batch's replies, each parsed as redis-py parses that command's (its response
        callback), an error reply as its exception. Straight on a pooled connection: one
        write, the replies read in order; redis-py's pipeline object (its reset, retry
        wrapper and shielded clean-up) cost ~35 µs a batch, most of a small batch's cost."""
        pool = self.redis.connection_pool
        callbacks = self.redis.response_callbacks
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(args for args, _ in batch))
            replies: list[Any] = []
            for args, _ in batch:
                try:
                    reply = await conn.read_response()
                except redis.ResponseError as exc:  # read whole: the connection stays in step
                    replies.append(exc)
                    continue
                callback = callbacks.get(args[0])
                replies.append(callback(reply) if callback is not None else reply)
            return replies
        except BaseException:  # a reply not read (an error, the deadline): out of step
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)


class AsyncMailbox:
    """Enqueue side, for the asyncio ingress: one script call per message, sent with the
    other requests' (``commands``, a :class:`Coalescer` the ingress shares)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_sec: int = DEFAULT_MESSAGE_TTL_SEC,
        run_ttl_sec: int = DEFAULT_RUN_TTL_SEC,
        run_max: int = DEFAULT_RUN_MAX,
    ):
        self.redis = client
        self.commands = Coalescer(client)
        self.ttl_sec = ttl_sec
        self.run_ttl_sec = run_ttl_sec
        self.run_max = run_max
        self._sha = client.register_script(lua.ENQUEUE).sha

    async def aclose(self) -> None:
        """Close the batches' connections (the client given is the caller's to close)."""
        await self.commands.aclose()

    async def enqueue(self, message: InboundMessage) -> Enqueued:
        """Store the message and its queued run, and wake its session: one EVALSHA (the
        script is loaded on first use, and again after a Redis restart). A duplicate
        message_id is dropped, with nothing written.

        After a Redis restart the pool may hand out a connection the old server closed;
        the call is then sent once more on a fresh one. That is safe: the script dedupes by
        message_id, and answers our own run_id when the first try did get through.
        """
        run_id = new_run_id()
        keys, args = enqueue_call(message, run_id, ttl_sec=self.ttl_sec,
                                  run_ttl_sec=self.run_ttl_sec, run_max=self.run_max)  # fmt: skip
        try:
            stored, known = await self._evalsha(keys, args)
        except (redis.ConnectionError, redis.TimeoutError):
            stored, known = await self._evalsha(keys, args)
        known = str(known or "")
        return Enqueued(bool(int(stored)) or known == run_id, known)

    async def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        call = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self.commands.execute(*call)
        except redis.exceptions.NoScriptError:  # a new or restarted server: load it once
            await self.redis.script_load(lua.ENQUEUE)
            return await self.commands.execute(*call)

    async def get_message(
        self, message_id: str, *, session_key: str | None = None
    ) -> dict[str, Any] | None:
        """The message's public record, or None; ``session_key``, when the caller knows it,
        saves looking it up by id."""
        try:
            return await self._get_message_once(message_id, session_key)
        except (redis.ConnectionError, redis.TimeoutError):  # a stale pooled connection
            return await self._get_message_once(message_id, session_key)

    async def outcome(self, message_id: str, session_key: str) -> tuple[str, str] | None:
        """The message's status and reply (two fields, not the whole record: what a request
        waiting for the reply polls), or None when it is not stored."""
        command = ("HMGET", k.message_key(session_key, message_id), "status", "reply")
        try:
            status, reply = await self.commands.execute(*command)
        except (redis.ConnectionError, redis.TimeoutError):  # a stale pooled connection
            status, reply = await self.commands.execute(*command)
        return None if status is None else (status, reply or "")

    async def _get_message_once(
        self, message_id: str, session_key: str | None
    ) -> dict[str, Any] | None:
        if session_key is None:
            session_key = await self.commands.execute("GET", k.message_index_key(message_id))
        if session_key is None:
            return None
        raw = await self.commands.execute("HGETALL", k.message_key(session_key, message_id))
        if not raw:
            return None
        return message_record(raw, message_id, session_key)
