"""The start-up self-check: once per gateway start, is there unfinished work to continue?

The active beat sends ``claw.selfcheck.run`` once per start (``scheduler.py``: a mark in
Redis, so neither a second worker nor a standby beat taking over sends another). It looks
at:

- recent sessions: each session's newest run in the runs index (kept for
  ``run_state_ttl_seconds``); a session whose newest run ``failed`` or was ``interrupted``
  is unfinished. Queued and running runs are not: the fleet resumes those by itself (the
  sweeper re-sends their drains). The sessions of heartbeats, self-checks, auto-learning and
  cron jobs are left out (a cron job runs again on its schedule), and so are sessions no
  person reads (a sub-agent's, a pipeline task's: their parent heard of the failure);
- the open items of ``HEARTBEAT.md`` (``heartbeat.open_items``).

With nothing unfinished, no LLM call is made. Each unfinished conversation is continued in
its own session and chat: one message (origin ``selfcheck``, id ``selfcheck-<run id>``)
with the digest of that session's run only, so the agent works with that conversation's
history and its reply goes to that chat and nowhere else. A fleet of many users shares
workers, so one chat's request must never be quoted to, or continued in, another's. At
most ``MAX_SESSIONS`` conversations (the newest) are continued per start: a restart should
not cost one LLM call per chat of the last half hour. A run is continued once: its
continuation's id is fixed (a second start drops the duplicate), and a continuation that
did not finish either is not continued again. The open items of ``HEARTBEAT.md`` (the
workspace's, no chat's) go on their own in the session ``selfcheck:main``, replying where
the heartbeat does (``heartbeat.target``). A reply ``HEARTBEAT_OK``, or no longer than
``heartbeat.ack_max_chars``, is dropped. What it found and did is kept in the hash
``constants.SELFCHECK_STATE``.
"""

from __future__ import annotations

import time

import redis

from beat_schedules.digest import digest, latest_per_session, recent_runs
from beat_schedules.heartbeat import HEARTBEAT_FILE, open_items, read_heartbeat, target
from claw_worker import constants as k
from claw_worker.config import Config, workspace_dir
from claw_worker.contract import InboundMessage, Origin
from claw_worker.session.submit import submit
from claw_worker.work.origin import INTERNAL_CHANNELS

CHANNEL = Origin.SELFCHECK.value  # never delivered: the reply goes where "deliver" says
SESSION_KEY = f"{CHANNEL}:main"
CONTINUE_PREFIX = "selfcheck-"  # message ids of continuations: selfcheck-<the run's id>
UNFINISHED = ("failed", "interrupted")
RUNS_LOOKED_AT = 200
MAX_SESSIONS = 8  # conversations continued per start (the newest first)
MAX_ITEMS = 20

CONVERSATION_PROMPT = (
    "[start-up self-check] The gateway has just started, and the last run of this "
    "conversation did not finish (below). Decide whether its work should continue now. "
    "Continue what you can do yourself with your tools; do not redo work that is done. Then "
    "say in a few lines what you continued and what needs the user's decision. If nothing "
    "needs attention, reply HEARTBEAT_OK."
)
ITEMS_PROMPT = (
    f"[start-up self-check] The gateway has just started. Below are the open items of "
    f"{HEARTBEAT_FILE}. Decide whether any of them should continue now. Continue what you can "
    "do yourself with your tools; do not redo work that is done. Then say in a few lines "
    "what you continued and what needs a decision. If nothing needs attention, reply "
    "HEARTBEAT_OK."
)
Unfinished = tuple[dict[str, str], str, str]  # the session's newest run, its channel, chat


def run(client: redis.Redis, config: Config) -> str:
    unfinished = _unfinished(client)
    items = open_items(read_heartbeat(workspace_dir(config)) or "")
    if not unfinished and not items:
        return _record(client, "idle", "nothing unfinished: no LLM call")
    quiet_ack = config.agents.defaults.heartbeat.ack_max_chars
    continuations = [_continuation(found, client, quiet_ack) for found in unfinished[:MAX_SESSIONS]]
    submitted = [m.message_id for m in continuations if submit(client, config, m).stored]
    if items:
        message = _items_check(client, config, items)
        client.delete(k.history_key(SESSION_KEY))  # a fresh look: not the last start's
        submit(client, config, message)
        submitted.append(message.message_id)
    left = max(0, len(unfinished) - MAX_SESSIONS)
    detail = (f"{len(unfinished)} unfinished conversation(s), each asked in its own chat"
              f"{f' (the {left} oldest left, over {MAX_SESSIONS})' if left else ''}; "
              f"{len(items)} open item(s)")  # fmt: skip
    return _record(client, "submitted", detail, message_id=",".join(submitted))


def _unfinished(client: redis.Redis) -> list[Unfinished]:
    """The sessions whose newest run did not finish, newest first, with the chat their
    message came from (a session no person reads, or whose chat is forgotten, is left)."""
    runs = recent_runs(client, limit=RUNS_LOOKED_AT, skip=(k.CRON_SESSION_PREFIX,))
    latest = [
        run
        for run in latest_per_session(runs).values()
        if run.get("status") in UNFINISHED
        and not run.get("message_id", "").startswith(CONTINUE_PREFIX)
    ]
    with client.pipeline(transaction=False) as pipe:
        for run in latest:
            pipe.hmget(k.message_key(run["session_key"], run.get("message_id", "")),
                       "channel", "chat_id")  # fmt: skip
        chats = pipe.execute()
    return [
        (run, channel, chat_id)
        for run, (channel, chat_id) in zip(latest, chats, strict=True)
        if channel and chat_id and channel not in INTERNAL_CHANNELS
    ]


def _continuation(found: Unfinished, client: redis.Redis, quiet_ack: int) -> InboundMessage:
    """The message that continues one conversation in its own session: its reply goes to
    its own chat, and the digest it carries is of that session only."""
    run, channel, chat_id = found
    session_key = run["session_key"]
    return InboundMessage(
        message_id=f"{CONTINUE_PREFIX}{run['run_id']}", channel=channel, chat_id=chat_id,
        session_key=session_key, sender_id=CHANNEL,
        text=f"{CONVERSATION_PROMPT}\n\n{digest(client, {session_key: [run]})}",
        metadata={"origin": Origin.SELFCHECK.value, "quiet_ack": quiet_ack},
    )  # fmt: skip


def _items_check(client: redis.Redis, config: Config, items: list[str]) -> InboundMessage:
    settings = config.agents.defaults.heartbeat
    shown = "\n".join(items[:MAX_ITEMS])
    more = f"\n(and {len(items) - MAX_ITEMS} more)" if len(items) > MAX_ITEMS else ""
    metadata: dict[str, object] = {"origin": Origin.SELFCHECK.value,
                                   "quiet_ack": settings.ack_max_chars}  # fmt: skip
    chat = target(client, settings)
    if chat is not None:
        metadata["deliver"] = {"channel": chat.channel, "chat_id": chat.chat_id}
    return InboundMessage(
        channel=CHANNEL, chat_id="main", session_key=SESSION_KEY, sender_id=CHANNEL,
        text=f"{ITEMS_PROMPT}\n\n## Open items of {HEARTBEAT_FILE}\n\n{shown}{more}",
        metadata=metadata,
    )  # fmt: skip


def _record(client: redis.Redis, action: str, detail: str, *, message_id: str = "") -> str:
    client.hset(
        k.SELFCHECK_STATE,
        mapping={"at": time.time(), "action": action, "detail": detail, "message_id": message_id},
    )
    return f"self-check {action}: {detail}"
