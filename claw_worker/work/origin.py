"""Where the run a tool serves stands in shared work: its chat, its depth, its pipeline.

A tool knows the session and the message id of its run (``ToolContext``); the rest is in
Redis: the message record holds the chat the message came from, a sub-agent's session has
its spawn record (parent, depth, the chat a person reads), and a pipeline task's session
names its pipeline, whose record holds the creator's depth and chat.

Depth: a run a user started is 0; a sub-agent, and each task of a pipeline, is one deeper
than the run that started it (``work.max_depth`` bounds both).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from claw_worker import constants as k
from claw_worker.contract import INTERNAL_CHANNEL, InboundMessage, Origin
from claw_worker.work.model import Pipeline, PipelineError, parse_session
from claw_worker.work.pipelines import load, not_found

MAX_CHAIN = 64  # steps up from a session to its root (work.max_depth is far less)
ANNOUNCE_PREFIX = "spawn-result-"  # message ids of sub-agents' reports to their parents
# Channels of internal messages (cron, heartbeat, ...): nobody reads them; a message's
# ``deliver`` target says where its replies go.
INTERNAL_CHANNELS = frozenset(
    {INTERNAL_CHANNEL, *(o.value for o in Origin if o is not Origin.USER)}
)


@dataclass(frozen=True)
class RunOrigin:
    session_key: str
    message_id: str
    channel: str  # the chat the run's message came from ("" outside a message's run)
    chat_id: str
    chat_channel: str  # the nearest chat a person reads (a sub-agent's: its root parent's)
    chat_chat_id: str
    depth: int
    pipeline_id: str = ""  # the pipeline the run works for ("" none)
    task_id: str = ""

    @property
    def announcement(self) -> bool:
        """The run answers a sub-agent's report: it may not start more work (no loops)."""
        return self.message_id.startswith(ANNOUNCE_PREFIX)


def run_origin(client: redis.Redis, session_key: str, message_id: str, origin: str) -> RunOrigin:
    channel = chat_id = ""
    if message_id:
        got = client.hmget(k.message_key(session_key, message_id), "channel", "chat_id")
        channel, chat_id = got[0] or "", got[1] or ""
    spawned = client.hgetall(k.spawn_key(session_key))
    if spawned:
        return RunOrigin(
            session_key, message_id, channel, chat_id,
            spawned.get("root_channel", ""), spawned.get("root_chat_id", ""),
            int(spawned.get("depth") or 1), spawned.get("pipeline_id", ""),
            spawned.get("task_id", ""),
        )  # fmt: skip
    task = parse_session(session_key) if origin == Origin.PIPELINE.value else None
    if task is not None:
        try:
            pipeline = load(client, task[0])
        except PipelineError:  # expired under a late run: a task all the same
            return RunOrigin(session_key, message_id, channel, chat_id, "", "", 1, *task)
        creator = pipeline.creator
        return RunOrigin(session_key, message_id, channel, chat_id, creator.channel,
                         creator.chat_id, pipeline.depth + 1, *task)  # fmt: skip
    chat = (channel, chat_id)
    if channel in INTERNAL_CHANNELS:  # a cron job's run, a heartbeat: where its replies go
        chat = _deliver_target(client, session_key, message_id) or chat
    return RunOrigin(session_key, message_id, channel, chat_id, *chat, 0)


def root_session(client: redis.Redis, session_key: str) -> str:
    """The session whose run started the work done in ``session_key``: up a sub-agent's
    parents and a pipeline task's creator to a session nobody started (a chat's, a cron
    job's, a heartbeat's). A task of an expired pipeline, or a pipeline made outside a
    session, is its own root."""
    seen: set[str] = set()
    while session_key not in seen and len(seen) < MAX_CHAIN:
        seen.add(session_key)
        parent = client.hget(k.spawn_key(session_key), "parent_session")
        task = parse_session(session_key) if not parent else None
        if task is not None:
            try:
                parent = load(client, task[0]).creator.session_key
            except PipelineError:
                parent = None
        if not parent:
            break
        session_key = parent
    return session_key


def may_use(client: redis.Redis, origin: RunOrigin, pipeline: Pipeline) -> bool:
    """Whether a run may read or change ``pipeline`` (ids are fleet-wide and guessable): its
    own (a task's run, a sub-agent working for it), one made for the same chat, or one made
    by work started from the same session (a chat's sub-agents and tasks see its pipelines).
    As ``/pipeline`` shows a chat only its own (claw_worker/commands/pipelines.py)."""
    creator = pipeline.creator
    if origin.pipeline_id == pipeline.id:
        return True
    chat = (origin.chat_channel, origin.chat_chat_id)
    if creator.channel and creator.chat_id and (creator.channel, creator.chat_id) == chat:
        return True
    return bool(creator.session_key) and root_session(client, creator.session_key) == root_session(
        client, origin.session_key
    )


def load_for(client: redis.Redis, origin: RunOrigin, pipeline_id: str) -> Pipeline:
    """The pipeline ``pipeline_id`` if ``origin``'s run may use it; else the same
    PipelineError as for a missing one (another chat's pipeline is not there for it)."""
    pipeline = load(client, pipeline_id)
    if not may_use(client, origin, pipeline):
        raise not_found(pipeline_id)
    return pipeline


def _deliver_target(
    client: redis.Redis, session_key: str, message_id: str
) -> tuple[str, str] | None:
    """The ``deliver`` target of the message this run answers (in flight while it runs)."""
    raw = client.lindex(k.inflight_key(session_key), 0)
    try:
        message = InboundMessage.model_validate_json(raw) if raw else None
    except ValueError:
        return None
    if message is None or message.message_id != message_id:
        return None
    deliver = message.metadata.get("deliver")
    if isinstance(deliver, dict) and deliver.get("channel") and deliver.get("chat_id"):
        return str(deliver["channel"]), str(deliver["chat_id"])
    return None
