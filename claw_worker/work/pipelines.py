"""Pipelines in Redis, and the dispatch of their tasks as agent runs over the fleet.

A pipeline is one JSON document (``constants.pipeline_key``), changed only inside an
optimistic transaction (WATCH the key, read, apply a function of ``transitions.py``,
MULTI/SET/EXEC, again on a conflict): two tasks finishing at the same moment on two workers
each see the other's result, and a task both waited for is claimed by exactly one of them.

A claimed task is started by submitting its message (``session/submit.py``) to its own
session ``pipeline:<id>:<task>`` on channel ``pipeline`` (never delivered), with a message
id made from the pipeline, the task and the attempt, so a repeated submission is dropped.
Any worker takes it. When its run is over the worker calls ``task_finished`` (through
``outcomes.record_work``), which marks dependents ready, starts them unless the pipeline's
``auto_dispatch`` is off, and tells the chat that made the pipeline when it finishes (or at
once when a task fails while others still run).

A worker that dies between finishing a run and reporting it would leave its task running;
``reconcile`` (run by every dispatch and status read; ``reconcile_active`` for a periodic
task) finishes such a task from its message record, submits again a task whose message
was never stored, and keeps a pipeline with a running task from expiring.

Imported by the ingress (``/pipeline``), so it imports no agent, provider or tool.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import (
    STARTED_BY_META,
    InboundMessage,
    MessageStatus,
    Origin,
    OutboundMessage,
)
from claw_worker.reply_filter import filter_reply
from claw_worker.session import scripts as lua
from claw_worker.session.stop import request_stop_sync
from claw_worker.session.submit import submit
from claw_worker.work import prompts, transitions
from claw_worker.work.model import Limits, Pipeline, PipelineError, Task, TaskState, session_key
from claw_worker.work.transitions import Changes, claim_ready, claim_task, finish

MAX_TRIES = 100  # optimistic transactions lost in a row before giving up (never seen)
RESUBMIT_AFTER_SEC = 60.0  # a running task whose message was never stored is submitted again
LIST_MAX = 50
FINISHED_RECORD = {"done", "failed", "cancelled"}


def limits(config: Config) -> Limits:
    work = config.work
    return Limits(work.max_pipeline_tasks, work.max_result_chars, work.max_shared_state_chars)


def not_found(pipeline_id: str) -> PipelineError:
    """The error for a pipeline that is not there (or, to the one asking, not its own); a
    long id (a chat's ``/pipeline status`` takes any word) is cut."""
    shown = pipeline_id if len(pipeline_id) <= 60 else pipeline_id[:60] + "…"
    return PipelineError(f"no pipeline {shown!r} (finished ones are kept for a while)")


def _parse(raw: str | None, pipeline_id: str) -> Pipeline:
    if raw is None:
        raise not_found(pipeline_id)
    return Pipeline.model_validate_json(raw)


def load(client: redis.Redis, pipeline_id: str) -> Pipeline:
    return _parse(client.get(k.pipeline_key(pipeline_id)), pipeline_id)


def latest(client: redis.Redis, session: str) -> str | None:
    """The id of the pipeline ``session`` made last, if it still exists."""
    pipeline_id = client.get(k.latest_pipeline_key(session))
    return pipeline_id if pipeline_id and client.exists(k.pipeline_key(pipeline_id)) else None


def viewers(session: str, channel: str, chat_id: str) -> list[str]:
    """The indexes (``constants.pipelines_made_for_key``) of a session's and a chat's."""
    made_for = [f"session:{session}"] if session else []
    return made_for + ([f"chat:{channel}:{chat_id}"] if channel and chat_id else [])


def _indexes(pipeline: Pipeline) -> list[str]:
    """The per-owner and per-viewer indexes holding ``pipeline``, kept as long as it is."""
    creator = pipeline.creator
    made_for = viewers(creator.session_key, creator.channel, creator.chat_id)
    owned = [k.pipelines_owned_key(pipeline.owner)] if pipeline.owner else []
    return owned + [k.pipelines_made_for_key(v) for v in made_for]


def list_pipelines(
    client: redis.Redis, *, limit: int = LIST_MAX, made_for: list[str] | None = None
) -> list[Pipeline]:
    """The newest pipelines first (of the fleet, or made for any of ``made_for``, see
    ``viewers``); ids whose record expired leave the indexes."""
    indexes = [k.pipelines_made_for_key(v) for v in made_for] if made_for is not None else [
        k.PIPELINES
    ]  # fmt: skip
    scored: dict[str, float] = {}
    for index in indexes:
        scored.update(client.zrevrange(index, 0, limit - 1, withscores=True))
    ids = sorted(scored, key=scored.__getitem__, reverse=True)[:limit]
    raws = client.mget([k.pipeline_key(i) for i in ids]) if ids else []
    gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
    if gone:
        for index in {*indexes, k.PIPELINES, k.PIPELINES_ACTIVE}:
            client.zrem(index, *gone)
    return [Pipeline.model_validate_json(raw) for raw in raws if raw is not None]


def _prune_expired(client: redis.Redis, index: str) -> None:
    """Drop from the ``index`` ZSET the pipelines whose record expired, so that its size
    counts the ones still there."""
    ids = client.zrange(index, 0, -1)
    if not ids:
        return
    with client.pipeline(transaction=False) as pipe:
        for pipeline_id in ids:
            pipe.exists(k.pipeline_key(pipeline_id))
        alive = pipe.execute()
    gone = [i for i, ok in zip(ids, alive, strict=True) if not ok]
    if gone:
        client.zrem(index, *gone)


def _refuse_over(config: Config, active: int, mine: int) -> None:
    if active >= config.work.max_active_pipelines:
        raise PipelineError(
            f"{active} pipelines are still running, the limit (work.max_active_pipelines); "
            "wait for one to finish"
        )
    if mine >= config.work.max_active_pipelines_per_sender:
        raise PipelineError(
            f"{mine} pipelines made for you are still running, the limit "
            "(work.max_active_pipelines_per_sender); wait for one to finish"
        )


def create(client: redis.Redis, config: Config, pipeline: Pipeline) -> None:
    """Store a new pipeline (made by ``model.make_pipeline``); an existing id is refused, so
    is one over the fleet's or its owner's number of unfinished pipelines. The task
    sessions start empty: a history left by an older pipeline of the same id goes.

    The limits are counted under WATCH of the indexes they count, in the transaction that
    stores the pipeline: pipelines made at the same moment each counted the others not
    there yet, and all were stored."""
    key = k.pipeline_key(pipeline.id)
    owned = k.pipelines_owned_key(pipeline.owner) if pipeline.owner else ""
    counted = [k.PIPELINES_ACTIVE, *([owned] if owned else [])]
    for _ in range(MAX_TRIES):
        for index in counted:
            _prune_expired(client, index)  # a write: before WATCH, or it fails the WATCH
        with client.pipeline() as pipe:
            try:
                pipe.watch(key, *counted)
                if pipe.exists(key):
                    raise PipelineError(f"a pipeline {pipeline.id!r} exists; choose another id")
                _refuse_over(config, pipe.zcard(k.PIPELINES_ACTIVE),
                             pipe.zcard(owned) if owned else 0)  # fmt: skip
                pipe.multi()
                _store_new(pipe, config, pipeline)
                pipe.execute()
                return
            except redis.WatchError:
                continue  # another pipeline was made or finished meanwhile: count again
    raise PipelineError("too many pipelines are being made at once; try again")


def _store_new(pipe: redis.client.Pipeline, config: Config, pipeline: Pipeline) -> None:
    ttl = config.work.pipeline_ttl_sec
    pipe.set(k.pipeline_key(pipeline.id), pipeline.model_dump_json(), ex=ttl)
    pipe.zadd(k.PIPELINES, {pipeline.id: pipeline.created_at})
    pipe.zadd(k.PIPELINES_ACTIVE, {pipeline.id: pipeline.created_at})
    for index in _indexes(pipeline):
        pipe.zadd(index, {pipeline.id: pipeline.created_at})
        pipe.expire(index, ttl)
    if pipeline.creator.session_key:
        pipe.set(k.latest_pipeline_key(pipeline.creator.session_key), pipeline.id, ex=ttl)
    for task in pipeline.tasks:
        pipe.delete(k.history_key(session_key(pipeline.id, task.id)))


def update(
    client: redis.Redis,
    config: Config,
    pipeline_id: str,
    change: Callable[[Pipeline, float], Changes],
) -> tuple[Pipeline, Changes]:
    """Apply ``change(pipeline, now)`` to the stored pipeline atomically (again if another
    writer won); ``change`` may raise PipelineError, which leaves the pipeline as it was.
    ``now`` is read on each try: a time taken before a lost race would date this change
    before the winner's (a task finished after its dependent started)."""
    key = k.pipeline_key(pipeline_id)
    with client.pipeline() as pipe:
        for _ in range(MAX_TRIES):
            try:
                pipe.watch(key)
                pipeline = _parse(pipe.get(key), pipeline_id)
                now = time.time()
                changes = change(pipeline, now)
                if not changes.changed:
                    pipe.unwatch()
                    return pipeline, changes
                pipeline.updated_at = now
                pipe.multi()
                pipe.set(key, pipeline.model_dump_json(), ex=config.work.pipeline_ttl_sec)
                for index in _indexes(pipeline):
                    pipe.expire(index, config.work.pipeline_ttl_sec)
                if pipeline.finished:
                    pipe.zrem(k.PIPELINES_ACTIVE, pipeline_id)
                    if pipeline.owner:
                        pipe.zrem(k.pipelines_owned_key(pipeline.owner), pipeline_id)
                pipe.execute()
                return pipeline, changes
            except redis.WatchError:
                continue
    raise PipelineError(f"pipeline {pipeline_id} is changing too fast; try again")


def task_message(config: Config, pipeline: Pipeline, task: Task) -> InboundMessage:
    """The run of a task in its own session (channel ``pipeline``: the reply is recorded,
    never delivered to a chat)."""
    creator = pipeline.creator  # whose budget, whose start: carried on from its run
    pairs = (("sender", creator.sender), (STARTED_BY_META, creator.started_by))
    carried = {key: value for key, value in pairs if value}
    return InboundMessage(
        message_id=task.message_id,
        channel=Origin.PIPELINE.value,
        chat_id=f"{pipeline.id}:{task.id}",
        sender_id="pipeline",
        session_key=task.session_key,
        text=prompts.task_text(pipeline, task, limit=config.quotas.max_message_chars),
        metadata={
            "origin": Origin.PIPELINE.value, "pipeline_id": pipeline.id, "task_id": task.id,
            "role": task.role, "attempt": task.attempt, "depth": pipeline.depth + 1,
            "goal": task.goal,  # the task's own words (its text also quotes other tasks)
            **carried,
        },
    )  # fmt: skip


def start(client: redis.Redis, config: Config, pipeline: Pipeline, tasks: list[Task]) -> None:
    """Submit the runs of claimed tasks (a sub-agent's task is submitted by ``spawn``)."""
    for task in tasks:
        if task.session_key == session_key(pipeline.id, task.id):
            submit(client, config, task_message(config, pipeline, task))


def dispatch(client: redis.Redis, config: Config, pipeline_id: str) -> tuple[Pipeline, list[Task]]:
    """Start every task whose dependencies are done; returns the pipeline and those started."""
    reconcile(client, config, load(client, pipeline_id))
    pipeline, changes = update(client, config, pipeline_id, claim_ready)
    start(client, config, pipeline, changes.started)
    return pipeline, changes.started


def cancel(
    client: redis.Redis, config: Config, pipeline_id: str, reason: str
) -> tuple[Pipeline, list[Task]]:
    """End the pipeline now: its running tasks' runs are stopped (as by /stop; a run still
    queued behind resource keys runs once, its finish ignored), the rest never start."""
    pipeline, changes = update(
        client, config, pipeline_id, lambda p, now: transitions.cancel(p, now, reason)
    )
    for task in changes.failed:
        request_stop_sync(client, task.session_key)
    return pipeline, changes.failed


def claim_for_spawn(
    client: redis.Redis, config: Config, pipeline_id: str, task_id: str, session: str, mid: str
) -> tuple[Pipeline, Task]:
    """A ready task, claimed for a sub-agent's run in ``session`` with message ``mid``."""
    claimed: list[Task] = []

    def change(p: Pipeline, now: float) -> Changes:
        claimed[:] = [claim_task(p, task_id, now, session, mid)]
        return Changes(changed=True)

    pipeline, _ = update(client, config, pipeline_id, change)
    return pipeline, pipeline.task(claimed[0].id)


def task_finished(
    client: redis.Redis,
    config: Config,
    pipeline_id: str,
    task_id: str,
    attempt: int,
    *,
    ok: bool,
    text: str,
    message_id: str = "",
) -> Changes:
    """A task's run is over: record it, start what became ready, report what must be.
    ``message_id``: the run's message, when known (a finish for another is stale)."""
    bounds = limits(config)
    pipeline, changes = update(
        client, config, pipeline_id,
        lambda p, now: finish(p, task_id, attempt, ok=ok, text=text, limits=bounds, now=now,
                              message_id=message_id),
    )  # fmt: skip
    start(client, config, pipeline, changes.started)
    report(client, config, pipeline, changes)
    return changes


def reconcile(client: redis.Redis, config: Config, pipeline: Pipeline) -> Pipeline:
    """Finish running tasks whose run is over but was never reported (a worker died in
    between), and submit again those whose message was never stored. A pipeline with a
    running task is kept another work.pipeline_ttl_sec: a run (or its wait for resource
    keys) longer than that must not lose the pipeline under it."""
    running = [t for t in pipeline.tasks if t.state is TaskState.RUNNING]
    if not running:
        return pipeline
    for key in (k.pipeline_key(pipeline.id), *_indexes(pipeline)):
        client.expire(key, config.work.pipeline_ttl_sec)
    with client.pipeline(transaction=False) as pipe:
        for task in running:
            pipe.hmget(k.message_key(task.session_key, task.message_id), "status", "reply",
                       "error")  # fmt: skip
        rows = pipe.execute()
    changed = False
    for task, (status, reply, error) in zip(running, rows, strict=True):
        if status in FINISHED_RECORD:
            ok = status == MessageStatus.DONE.value
            text = (reply or "") if ok else (error or reply or f"the run ended {status}")
            task_finished(client, config, pipeline.id, task.id, task.attempt, ok=ok, text=text)
            changed = True
        elif status is None and time.time() - task.started_at > RESUBMIT_AFTER_SEC:
            if task.session_key == session_key(pipeline.id, task.id):
                submit(client, config, task_message(config, pipeline, task))
            else:
                task_finished(client, config, pipeline.id, task.id, task.attempt, ok=False,
                              text="its sub-agent's run was never stored")  # fmt: skip
                changed = True
    return load(client, pipeline.id) if changed else pipeline


def reconcile_active(client: redis.Redis, config: Config) -> int:
    """``reconcile`` every unfinished pipeline (for a periodic task); returns how many."""
    count = 0
    for pipeline_id in client.zrange(k.PIPELINES_ACTIVE, 0, -1):
        try:
            reconcile(client, config, load(client, pipeline_id))
        except PipelineError:  # expired: the index entry goes on the next count
            continue
        count += 1
    return count


def report(client: redis.Redis, config: Config, pipeline: Pipeline, changes: Changes) -> None:
    """Tell the chat that made the pipeline that it finished, or that a task failed while
    others still run (each report published once, whoever sends it)."""
    creator = pipeline.creator
    if not creator.channel or not creator.chat_id:
        return
    if changes.finished:
        mid = f"pipeline-{pipeline.id}-{pipeline.nonce}-finished"
        text = prompts.finish_notice(pipeline)
    elif changes.failed:
        first = changes.failed[0]
        mid = f"pipeline-{pipeline.id}-{pipeline.nonce}-failed-{first.id}-{first.attempt}"
        text = prompts.failure_notice(pipeline, changes.failed)
    else:
        return
    out = OutboundMessage(
        message_id=mid, channel=creator.channel, chat_id=creator.chat_id,
        session_key=creator.session_key or f"pipeline:{pipeline.id}",
        text=filter_reply(config, text),  # the tasks' results, as a user will read them
        status=MessageStatus.DONE if pipeline.status != "failed" else MessageStatus.FAILED,
        metadata={"kind": "pipeline", "pipeline_id": pipeline.id, "status": pipeline.status},
    )  # fmt: skip
    client.register_script(lua.PUBLISH_ONCE)(
        keys=[k.reply_sent_key(mid), k.OUTBOUND_STREAM],
        args=[out.model_dump_json(), config.worker.message_ttl_sec, k.OUTBOUND_MAXLEN],
    )
