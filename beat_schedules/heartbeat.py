"""The heartbeat: every ``heartbeat.every_sec`` the agent looks at ``HEARTBEAT.md``.

Each tick (``claw.heartbeat.tick``, sent by beat) does one of:

- ``busy``: the previous heartbeat is still queued or running (its session has a lease or
  waiting messages): nothing is added, so slow heartbeats never pile up;
- ``idle``: ``HEARTBEAT.md`` is missing or has nothing actionable: no LLM call at all;
- ``submitted``: one message in the session ``heartbeat:main`` (origin ``heartbeat``: the
  worker gives it minimal context, no long chat history and no memory recall) holding
  ``prompt_template`` and the file's text.

Nothing actionable means: after removing HTML comments (``<!-- ... -->``), no line is left
but blank ones, headings (``#``), rules (``---``), empty list items and checked-off items
(``- [x] ...``). Any other line (``- [ ] check the deploy``, plain text) is an open item.

A reply of ``HEARTBEAT_OK``, or no longer than ``ack_max_chars``, is not delivered
(``quiet_ack``), nor is a failure when the previous heartbeat failed too
(``quiet_failure``: a provider down for hours is told once, not at every tick); another
goes to ``target_channel``/``target_chat_id`` when set, else to the chat whose user wrote
last (``constants.LAST_ACTIVE``), else nowhere. Every tick is
recorded in the hash ``constants.HEARTBEAT_STATE``: when, what it did and why, and a count
per action.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import redis

from claw_worker import constants as k
from claw_worker import metrics
from claw_worker.autonomy_state import Chat, last_active
from claw_worker.config import Config, workspace_dir
from claw_worker.config.schema import HeartbeatConfig
from claw_worker.contract import InboundMessage, MessageStatus, Origin
from claw_worker.fsutil import read_workspace_text
from claw_worker.session.mailbox import Mailbox
from claw_worker.session.submit import submit

HEARTBEAT_FILE = "HEARTBEAT.md"
MAX_HEARTBEAT_BYTES = 256 * 1024  # a checklist; more is not read
CHANNEL = Origin.HEARTBEAT.value  # never delivered: replies go where "deliver" says
SESSION_KEY = f"{CHANNEL}:main"
MAX_FILE_CHARS = 8000  # of the file, in the message

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_MARKER = r"(?:[-*+]|\d+[.)])"
_DONE_ITEM = re.compile(rf"^{_MARKER}\s+\[[xX]\]")
_EMPTY_ITEM = re.compile(rf"^{_MARKER}(?:\s+\[\s?\])?$")
_RULE = re.compile(r"^([-*_])(?:\s*\1){2,}$")


def without_comments(text: str) -> str:
    return _COMMENT.sub("", text)


def open_items(text: str) -> list[str]:
    """The lines of a HEARTBEAT.md that ask for something (see the module's docstring)."""
    found = []
    for line in without_comments(text).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or _RULE.match(line):
            continue
        if _DONE_ITEM.match(line) or _EMPTY_ITEM.match(line):
            continue
        found.append(line)
    return found


def read_heartbeat(workspace: Path) -> str | None:
    """The text of HEARTBEAT.md, or None when there is no such file (or it cannot be read:
    a tick must not fail over it, and the detail it records says so)."""
    return read_workspace_text(workspace, HEARTBEAT_FILE, MAX_HEARTBEAT_BYTES)


def target(client: redis.Redis, config: HeartbeatConfig) -> Chat | None:
    """Where a heartbeat's reply goes: the configured chat, else the last active one."""
    if config.target_channel:
        return Chat(config.target_channel, config.target_chat_id, "")
    return last_active(client.get(k.LAST_ACTIVE))


def tick(client: redis.Redis, config: Config) -> str:
    settings = config.agents.defaults.heartbeat
    if not settings.enabled:  # a reload switched it off before beat dropped the entry
        return _record(client, "disabled", "heartbeat.enabled is false")
    if any(Mailbox(client).probe(SESSION_KEY)):
        return _record(client, "busy", "the previous heartbeat is still queued or running")
    text = read_heartbeat(workspace_dir(config))
    if text is None:
        return _record(client, "idle", f"no readable {HEARTBEAT_FILE}")
    items = open_items(text)
    if not items:
        return _record(client, "idle", f"nothing actionable in {HEARTBEAT_FILE}")
    chat = target(client, settings)
    metadata: dict[str, object] = {"origin": Origin.HEARTBEAT.value,
                                   "quiet_ack": settings.ack_max_chars}  # fmt: skip
    again = _previous_failed(client)
    if again:
        metadata["quiet_failure"] = True
    if chat is not None:
        metadata["deliver"] = {"channel": chat.channel, "chat_id": chat.chat_id}
    shown = without_comments(text).strip()[:MAX_FILE_CHARS]
    message = InboundMessage(
        channel=CHANNEL, chat_id="main", session_key=SESSION_KEY, sender_id=CHANNEL,
        text=f"{settings.prompt_template}\n\n## {HEARTBEAT_FILE}\n\n{shown}", metadata=metadata,
    )  # fmt: skip
    submit(client, config, message)
    where = f"{chat.channel}:{chat.chat_id}" if chat else "no chat (nobody has written yet)"
    detail = f"{len(items)} open item(s); a reply goes to {where}"
    if again:
        detail += " (a failure would not: the previous heartbeat failed)"
    return _record(client, "submitted", detail, message_id=message.message_id)


def _previous_failed(client: redis.Redis) -> bool:
    """Whether the last heartbeat submitted failed (its message record; a tick submits only
    once the previous heartbeat has finished)."""
    previous = client.hget(k.HEARTBEAT_STATE, "message_id")
    if not previous:
        return False
    status = client.hget(k.message_key(SESSION_KEY, previous), "status")
    return status == MessageStatus.FAILED.value


def _record(client: redis.Redis, action: str, detail: str, *, message_id: str = "") -> str:
    metrics.HEARTBEAT_TICKS.labels(action).inc()
    fields = {"last_tick_at": time.time(), "action": action, "detail": detail}
    if message_id:
        fields["message_id"] = message_id
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(k.HEARTBEAT_STATE, mapping=fields)
        pipe.hincrby(k.HEARTBEAT_STATE, "ticks", 1)
        pipe.hincrby(k.HEARTBEAT_STATE, action, 1)
        pipe.execute()
    return f"heartbeat {action}: {detail}"
