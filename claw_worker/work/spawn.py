"""Sub-agents: ``spawn`` starts an agent run in a session of its own, on any worker; its
result comes back to the parent session as a new message, which the parent's agent answers
in the parent's chat (so the person who asked hears what the sub-agent found).

Limits: a sub-agent is one level deeper than its parent and ``work.max_depth`` bounds the
depth; at most ``work.max_spawn_per_session`` sub-agents of one parent session run at once
(a ZSET of the running ones, taken and counted in one Lua call; one not heard from after
``work.spawn_timeout_sec`` no longer counts). A run that answers a sub-agent's report may
not spawn (nor make a pipeline): a report can never start work, so reports cannot loop.
A report travels up only: one that reaches a sub-agent's own session is answered there and
that answer goes up to its parent in turn.

With ``pipeline_id`` and ``task_id`` the sub-agent runs that (ready) pipeline task: its
result completes the task, and dependents start as after any task's run. A run working for
a task may start only that kind: its final reply is its task's result, so a free
sub-agent's report would come after the task is over, to nobody.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

import redis
import structlog

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import (
    INTERNAL_CHANNEL,
    REPORT_KIND,
    STARTED_BY_META,
    InboundMessage,
    MessageStatus,
    Origin,
)
from claw_worker.session.submit import submit
from claw_worker.work import prompts
from claw_worker.work.model import Pipeline, PipelineError
from claw_worker.work.origin import ANNOUNCE_PREFIX, INTERNAL_CHANNELS, RunOrigin, load_for
from claw_worker.work.pipelines import claim_for_spawn, task_finished

log = structlog.get_logger(__name__)

# KEYS: the parent's running sub-agents (ZSET), its counter   ARGV: now, stale before, max,
# the child session's prefix. Drops stale entries; {0, running} when full, else {1, child}.
TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local running = redis.call('ZCARD', KEYS[1])
if running >= tonumber(ARGV[3]) then return {0, running} end
local child = ARGV[4] .. redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[1], child)
return {1, child}
"""
FINISHED_RECORD = ("done", "failed", "cancelled")
WORK_CHANNELS = frozenset({Origin.SPAWN.value, Origin.PIPELINE.value})


class SpawnError(ValueError):
    """A sub-agent that may not be started; the message says why."""


@dataclass(frozen=True)
class Spawned:
    session_key: str
    message_id: str
    depth: int
    role: str
    pipeline_id: str = ""
    task_id: str = ""


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else hashlib.sha256(text.encode()).hexdigest()[:32]


def spawn(
    client: redis.Redis,
    config: Config,
    parent: RunOrigin,
    *,
    task: str,
    role: str = "",
    pipeline_id: str = "",
    task_id: str = "",
    sender: str = "",
    started_by: str = "",
) -> Spawned:
    """Start a sub-agent of ``parent``; ``sender`` (``channel:sender_id``, "" none) is the
    person whose daily token budget the parent run is charged to, and the child's is too;
    ``started_by`` (``InboundMessage.started_by``) who started the parent's work, and so the
    child's."""
    work = config.work
    if parent.announcement:
        raise SpawnError("this run answers a sub-agent's report, and a report may not start "
                         "more sub-agents (that could loop); answer it yourself")  # fmt: skip
    depth = parent.depth + 1
    if depth > work.max_depth:
        raise SpawnError(
            f"a sub-agent here would be at depth {depth}, over work.max_depth "
            f"({work.max_depth}); do this work yourself"
        )
    if parent.task_id and not task_id:
        raise SpawnError(
            f"this run works for task {parent.task_id} of pipeline {parent.pipeline_id}: its "
            "final reply is the task's result, and a sub-agent's report would come after it, "
            "to nobody; do this part yourself, or run another ready task of the pipeline with "
            "spawn's task_id"
        )
    if task_id and not pipeline_id:
        pipeline_id = parent.pipeline_id
        if not pipeline_id:
            raise SpawnError("task_id needs the pipeline_id of its pipeline")
    try:
        pipeline: Pipeline | None = load_for(client, parent, pipeline_id) if pipeline_id else None
    except PipelineError as exc:
        raise SpawnError(str(exc)) from None
    if work.max_spawn_per_session == 0:
        raise SpawnError("sub-agents are turned off (work.max_spawn_per_session is 0)")
    reconcile_children(client, config, parent.session_key)
    now = time.time()
    taken, child = client.register_script(TAKE_SLOT)(
        keys=[k.spawn_active_key(parent.session_key), k.spawn_seq_key(parent.session_key)],
        args=[now, now - work.spawn_timeout_sec, work.max_spawn_per_session,
              f"spawn:{_fit(parent.session_key, 480)}:"],
    )  # fmt: skip
    if not int(taken):
        raise SpawnError(
            f"this session has {child} sub-agent(s) running, the limit "
            f"(work.max_spawn_per_session); wait until one reports back"
        )
    client.zadd(k.SPAWN_PARENTS, {parent.session_key: now})  # for reconcile_spawned
    mid, attempt, goal = f"spawn-{uuid.uuid4().hex}", 0, task
    room = config.quotas.max_message_chars
    try:
        if task_id:
            pipeline, claimed = claim_for_spawn(client, config, pipeline_id, task_id, child, mid)
            text = prompts.task_text(pipeline, claimed, instructions=task, limit=room)
            role, attempt, goal = role or claimed.role, claimed.attempt, f"{claimed.goal}\n{task}"
        else:
            text, goal = prompts.spawn_text(task, role, pipeline, limit=room), task
    except PipelineError as exc:
        client.zrem(k.spawn_active_key(parent.session_key), child)
        raise SpawnError(str(exc)) from None
    record = {
        "parent_session": parent.session_key, "parent_channel": parent.channel,
        "parent_chat_id": parent.chat_id, "root_channel": parent.chat_channel,
        "root_chat_id": parent.chat_chat_id, "depth": depth, "role": role,
        "pipeline_id": pipeline_id, "task_id": task_id, "attempt": attempt,
        "message_id": mid, "task": task[:2000], "status": "running", "started_at": now,
        "sender": sender, STARTED_BY_META: started_by,
    }  # fmt: skip
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(k.spawn_key(child), mapping=record)
        pipe.expire(k.spawn_key(child), config.worker.message_ttl_sec)
        pipe.execute()
    carried = ("parent_session", "depth", "role", "pipeline_id", "task_id", "attempt", "sender",
               STARTED_BY_META)  # fmt: skip
    metadata = {key: record[key] for key in carried if record[key]}
    submit(client, config, InboundMessage(
        message_id=mid, channel=Origin.SPAWN.value, chat_id=_fit(child, 256),
        sender_id=_fit(parent.session_key, 256), session_key=child, text=text,
        metadata={"origin": Origin.SPAWN.value, "goal": goal, **metadata},
    ))  # fmt: skip
    log.info("sub-agent spawned", session_key=child, parent=parent.session_key, depth=depth)
    return Spawned(child, mid, depth, role, pipeline_id, task_id)


def child_finished(
    client: redis.Redis,
    config: Config,
    session: str,
    message_id: str,
    status: MessageStatus,
    result: str,
) -> None:
    """A message in a sub-agent's session finished: free its slot (the first message, its
    job), complete its pipeline task, and report to the parent session."""
    record = client.hgetall(k.spawn_key(session))
    if not record:
        return  # a report answered in a top-level session: that reply went to the chat
    result = result[: config.work.max_result_chars]
    if message_id == record.get("message_id"):
        with client.pipeline(transaction=False) as pipe:
            pipe.zrem(k.spawn_active_key(record["parent_session"]), session)
            pipe.hset(k.spawn_key(session), mapping={
                "status": status.value, "finished_at": time.time(), "result": result})  # fmt: skip
            pipe.execute()
        if record.get("pipeline_id") and record.get("task_id"):
            try:
                task_finished(client, config, record["pipeline_id"], record["task_id"],
                              int(record.get("attempt") or 0), ok=status is MessageStatus.DONE,
                              text=result, message_id=message_id)  # fmt: skip
            except PipelineError as exc:
                log.warning("pipeline task of a sub-agent not recorded", error=str(exc))
    report_id = ANNOUNCE_PREFIX + message_id
    if len(report_id) > 128:  # a report of a report of ...: ids would grow with the depth
        report_id = ANNOUNCE_PREFIX + hashlib.sha256(message_id.encode()).hexdigest()[:40]
    parent, channel = record["parent_session"], record.get("parent_channel") or INTERNAL_CHANNEL
    metadata = {"origin": Origin.SPAWN.value, "kind": REPORT_KIND, "child_session": session}
    for carried in ("sender", STARTED_BY_META):  # the parent's answer: the same person's,
        if record.get(carried):  # the same start's
            metadata[carried] = record[carried]
    # A cron job's run (say) answers the report in its chat; a sub-agent or a pipeline task
    # answers it in its own session (a sub-agent's answer goes up to its parent in turn).
    root = record.get("root_channel"), record.get("root_chat_id")
    if channel in INTERNAL_CHANNELS - WORK_CHANNELS and root[0] and root[1]:
        metadata["deliver"] = {"channel": root[0], "chat_id": root[1]}
    submit(client, config, InboundMessage(
        message_id=report_id, channel=channel,
        chat_id=record.get("parent_chat_id") or _fit(parent, 256), sender_id="spawn",
        session_key=parent,
        text=prompts.announce_text(session, record.get("role", ""), status.value,
                                   record.get("task", ""), result,
                                   limit=config.quotas.max_message_chars),
        metadata=metadata,
    ))  # fmt: skip


def reconcile_spawned(client: redis.Redis, config: Config) -> int:
    """``reconcile_children`` of every parent with sub-agents running (for the periodic work
    check: a parent that never spawns again still hears of a child whose worker died before
    reporting); returns how many parents were looked at. A parent with none left leaves
    the index."""
    parents = client.zrange(k.SPAWN_PARENTS, 0, -1)
    for parent in parents:
        reconcile_children(client, config, parent)
        if not client.zcard(k.spawn_active_key(parent)):
            client.zrem(k.SPAWN_PARENTS, parent)
    return len(parents)


def reconcile_children(client: redis.Redis, config: Config, parent: str) -> None:
    """Report the parent's sub-agents whose run ended but was never reported (their worker
    died in between), so they stop counting toward the limit. Safe to repeat: the report's
    message id is fixed, and a finished task is not finished twice."""
    children = client.zrange(k.spawn_active_key(parent), 0, -1)
    for child in children:
        mid = client.hget(k.spawn_key(child), "message_id")
        if not mid:
            client.zrem(k.spawn_active_key(parent), child)
            continue
        status, reply, error = client.hmget(k.message_key(child, mid), "status", "reply", "error")
        if status in FINISHED_RECORD:
            ok = status == MessageStatus.DONE.value
            child_finished(client, config, child, mid, MessageStatus(status),
                           (reply or "") if ok else (error or reply or ""))  # fmt: skip
