"""Run state: every processed message is a run ``run-<unix-ns>-<n>`` with its state in Redis.

Workers write it (:class:`RunRecorder`); the ingress reads it for ``/status run`` and
``/status wait`` (:func:`read_run`, :func:`resolve_run_id`) with an asyncio client, so this
module imports only redis and the constants.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from claw_worker import constants as k

FINISHED = ("done", "failed", "cancelled")

# The <n> of ids made where a message is enqueued: a per-process count from a random start;
# with the nanosecond timestamp, two processes would have to agree on both to collide.
_QUEUED_SEQ = itertools.count(random.randrange(1, 1 << 30))


def new_run_id() -> str:
    return f"run-{time.time_ns()}-{next(_QUEUED_SEQ)}"


def queue_run(
    pipe: Any, run_id: str, session_key: str, message_id: str, *, ttl_sec: int, max_runs: int
) -> None:
    """Add the commands that record a queued run to ``pipe`` (the enqueue pipeline, sync or
    asyncio: the commands are only buffered here)."""
    now = time.time()
    pipe.hset(
        k.run_key(run_id),
        mapping={
            "run_id": run_id,
            "session_key": session_key,
            "message_id": message_id,
            "status": "queued",
            "queued_at": now,
        },
    )
    pipe.expire(k.run_key(run_id), ttl_sec)
    pipe.zadd(k.RUNS_INDEX, {run_id: now})
    pipe.zremrangebyrank(k.RUNS_INDEX, 0, -max_runs - 1)  # their records expire on their own


def forget_expired(client: redis.Redis, batch: int = 500) -> int:
    """Drop from the runs index the runs whose records have expired (beat, every few
    minutes): the index is capped at run_state_max, but a quiet fleet would otherwise keep
    pointing at records gone for hours. Returns how many were dropped."""
    dropped, start = 0, 0
    while True:
        run_ids = client.zrange(k.RUNS_INDEX, start, start + batch - 1)
        if not run_ids:
            return dropped
        with client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.exists(k.run_key(run_id))
            alive = pipe.execute()
        gone = [run_id for run_id, ok in zip(run_ids, alive, strict=True) if not ok]
        if gone:
            client.zrem(k.RUNS_INDEX, *gone)
            dropped += len(gone)
        start += batch - len(gone)


class RunRecorder:
    def __init__(
        self, client: redis.Redis, *, ttl_sec: int, max_runs: int, worker: str = ""
    ) -> None:
        self.redis = client
        self.ttl_sec = ttl_sec
        self.max_runs = max_runs
        self.worker = worker  # node name of this worker, recorded on each run it starts

    def start(
        self, session_key: str, message_id: str, attempt: int, run_id: str | None = None
    ) -> str:
        """Mark the message's run running; ``run_id`` is the one made when it was queued
        (None for a message stored without one: a run is made here)."""
        now = time.time()
        fields = {"status": "running", "attempt": attempt, "started_at": now, "worker": self.worker}
        with self.redis.pipeline(transaction=False) as pipe:
            if run_id:
                pipe.hset(k.run_key(run_id), mapping=fields)
                pipe.expire(k.run_key(run_id), self.ttl_sec)
            else:
                run_id = f"run-{time.time_ns()}-{self.redis.incr(k.RUN_SEQ)}"
                queue_run(
                    pipe, run_id, session_key, message_id,
                    ttl_sec=self.ttl_sec, max_runs=self.max_runs,
                )  # fmt: skip
                pipe.hset(k.run_key(run_id), mapping=fields)
                pipe.set(k.latest_run_key(session_key), run_id, ex=self.ttl_sec)
            pipe.execute()
        return run_id

    def note(self, run_id: str, status: str, **fields: Any) -> None:
        """Set the status of a run between its attempts, without finishing it (a message
        waiting for its resource keys is ``resource_lock``)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(k.run_key(run_id), mapping={"status": status, **fields})
            pipe.expire(k.run_key(run_id), self.ttl_sec)
            pipe.execute()

    def finish(self, run_id: str, status: str, **fields: Any) -> None:
        mapping = {"status": status, "finished_at": time.time()}
        mapping.update({name: value for name, value in fields.items() if value is not None})
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(k.run_key(run_id), mapping=mapping)
            pipe.expire(k.run_key(run_id), self.ttl_sec)
            pipe.execute()


async def resolve_run_id(client: aioredis.Redis, session_key: str, ref: str) -> str | None:
    """``latest`` (this session's last run, in any casing) or an explicit run id."""
    if ref.lower() in ("", "latest"):
        return await client.get(k.latest_run_key(session_key))
    return ref


async def read_run(client: aioredis.Redis, run_id: str) -> dict[str, str] | None:
    record = await client.hgetall(k.run_key(run_id))
    return record or None


def describe_run(run: dict[str, str]) -> str:
    queued = float(run.get("queued_at") or 0)
    started = float(run.get("started_at") or 0)
    finished = float(run.get("finished_at") or 0)
    since = float(run.get("lock_since") or 0)
    if run.get("status") == "resource_lock":
        took = f"waiting for resource keys for {time.time() - since:.0f}s"
    elif not started:
        took = f"waiting for {time.time() - queued:.0f}s"
    elif finished:
        took = f"{finished - started:.1f}s"
    else:
        took = f"running for {time.time() - started:.0f}s"
    parts = [
        f"{run.get('run_id')}: {run.get('status')} ({took})",
        f"session {run.get('session_key')}, message {run.get('message_id')}"
        + (f", worker {run['worker']}" if run.get("worker") else ""),
        f"attempt {run.get('attempt', '1')}, llm calls {run.get('llm_calls', '0')}, "
        f"tool steps {run.get('tool_steps', '0')}, tokens {run.get('total_tokens', '0')}",
    ]
    if run.get("status") == "resource_lock":
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        parts.append(f"resource_lock: {run.get('lock_wait', 'waiting')} (since {at})")
    if run.get("error"):
        parts.append(f"error: {run['error']}")
    return "\n".join(parts)
