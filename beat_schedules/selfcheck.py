"""The start-up self-check: once per gateway start, is there unfinished work to continue?

The active beat sends ``claw.selfcheck.run`` once per start (``scheduler.py``: a mark in
Redis, so neither a second worker nor a standby beat taking over sends another). It looks
at:

- recent sessions: each session's newest run in the runs index (kept for
  ``run_state_ttl_seconds``); a session whose newest run ``failed`` or was ``interrupted``
  is unfinished. Queued and running runs are not: the fleet resumes those by itself (the
  sweeper re-sends their drains). The sessions of heartbeats, self-checks, auto-learning and
  cron jobs are left out (a cron job runs again on its schedule);
- the open items of ``HEARTBEAT.md`` (``heartbeat.open_items``).

With nothing unfinished, no LLM call is made. Otherwise one message goes to the session
``selfcheck:main`` (origin ``selfcheck``) with a compact digest, asking the agent to decide
what should continue; its reply reaches the last active chat only when it says something
(``HEARTBEAT_OK`` or a reply no longer than ``heartbeat.ack_max_chars`` is dropped). What
it found and did is kept in the hash ``constants.SELFCHECK_STATE``.
"""

from __future__ import annotations

import time

import redis

from beat_schedules.digest import digest, latest_per_session, recent_runs
from beat_schedules.heartbeat import HEARTBEAT_FILE, open_items, read_heartbeat
from claw_worker import constants as k
from claw_worker.autonomy_state import last_active
from claw_worker.config import Config, workspace_dir
from claw_worker.contract import InboundMessage, Origin
from claw_worker.session.submit import submit

CHANNEL = Origin.SELFCHECK.value  # never delivered: the reply goes where "deliver" says
SESSION_KEY = f"{CHANNEL}:main"
UNFINISHED = ("failed", "interrupted")
RUNS_LOOKED_AT = 200
MAX_ITEMS = 20

PROMPT = (
    "[start-up self-check] The gateway has just started. Below is what looks unfinished: "
    "recent conversations whose last run did not finish, and the open items of HEARTBEAT.md. "
    "Decide whether any of it should continue now. Continue what you can do yourself with "
    "your tools; do not redo work that is done. Then say in a few lines what you continued "
    "and what needs the user's decision. If nothing needs attention, reply HEARTBEAT_OK."
)


def run(client: redis.Redis, config: Config) -> str:
    runs = recent_runs(client, limit=RUNS_LOOKED_AT, skip=("cron:",))
    unfinished = {
        session_key: [run]
        for session_key, run in latest_per_session(runs).items()
        if run.get("status") in UNFINISHED
    }
    items = open_items(read_heartbeat(workspace_dir(config)) or "")
    if not unfinished and not items:
        return _record(client, "idle", "nothing unfinished: no LLM call")
    parts = [PROMPT]
    if unfinished:
        parts.append(f"## Unfinished conversations\n\n{digest(client, unfinished)}")
    if items:
        shown = "\n".join(items[:MAX_ITEMS])
        more = f"\n(and {len(items) - MAX_ITEMS} more)" if len(items) > MAX_ITEMS else ""
        parts.append(f"## Open items of {HEARTBEAT_FILE}\n\n{shown}{more}")
    metadata: dict[str, object] = {
        "origin": Origin.SELFCHECK.value,
        "quiet_ack": config.agents.defaults.heartbeat.ack_max_chars,
    }
    chat = last_active(client.get(k.LAST_ACTIVE))
    if chat is not None:
        metadata["deliver"] = {"channel": chat.channel, "chat_id": chat.chat_id}
    message = InboundMessage(
        channel=CHANNEL,
        chat_id="main",
        session_key=SESSION_KEY,
        sender_id=CHANNEL,
        text="\n\n".join(parts),
        metadata=metadata,
    )
    client.delete(k.history_key(SESSION_KEY))  # a fresh look: not the last start's
    submit(client, config, message)
    detail = f"{len(unfinished)} unfinished session(s), {len(items)} open item(s): asked the agent"
    return _record(client, "submitted", detail, message_id=message.message_id)


def _record(client: redis.Redis, action: str, detail: str, *, message_id: str = "") -> str:
    client.hset(
        k.SELFCHECK_STATE,
        mapping={"at": time.time(), "action": action, "detail": detail, "message_id": message_id},
    )
    return f"self-check {action}: {detail}"
