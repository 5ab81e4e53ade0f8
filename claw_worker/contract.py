"""The message contract shared by the ingress and the workers (pydantic, JSON on the wire)."""

from __future__ import annotations

import os
import re
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def new_message_id() -> str:
    return os.urandom(16).hex()  # 128 random bits (uuid4 has 122), 4x cheaper than uuid4


# A session a caller names (the HTTP API, /ws, /v1, ``clawctl agent --session``): 1 to 256
# characters, no whitespace or braces. Keys the fleet makes itself may be longer (512).
SESSION_NAME_MAX = 256
_SESSION_NAME = re.compile(r"[^\s{}]{1,256}")


def session_name_error(name: str, *, namespace: str = "") -> str | None:
    """Why ``name`` cannot be a session a caller names, or None.

    With ``namespace`` (the caller's channel: ``api``, ``ws``, ``openai``) it must also begin
    with ``<namespace>:``: a session of another namespace is another channel's conversation
    (``telegram:123``), whose history the run would read and whose reply would go back to
    this caller. Like the API's sender ids, a caller's choice of session proves nothing."""
    if not _SESSION_NAME.fullmatch(name):
        return f"session must be 1 to {SESSION_NAME_MAX} characters without spaces or braces"
    if namespace and not name.startswith(f"{namespace}:"):
        return (f"session must begin with {namespace}: (e.g. {namespace}:default); the "
                "sessions of other channels are not this caller's to use")  # fmt: skip
    return None


def session_name_pattern(namespace: str) -> str:
    """``session_name_error``'s rule as a JSON-schema pattern (the OpenAPI document)."""
    return rf"^{re.escape(namespace)}:[^\s{{}}]+$"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (MessageStatus.DONE, MessageStatus.FAILED, MessageStatus.CANCELLED)


class Origin(StrEnum):
    """Who put a message in the mailbox (``metadata["origin"]``; a user when absent)."""

    USER = "user"
    CRON = "cron"  # a cron job firing
    HEARTBEAT = "heartbeat"  # the periodic look at HEARTBEAT.md
    AUTONOMY = "autonomy"  # a round of autonomous work
    AUTOLEARN = "autolearn"  # a review of recent runs into procedures
    SELFCHECK = "selfcheck"  # the start-up look at unfinished work
    PIPELINE = "pipeline"  # a task of a multi-agent pipeline
    SPAWN = "spawn"  # a sub-agent started by another run


# The fleet's own time-driven work: runs nobody asked for in a message. What they may do is
# bounded (e.g. they add no cron jobs), and so is the work they start.
FLEET_ORIGINS = frozenset(
    {Origin.CRON, Origin.HEARTBEAT, Origin.AUTONOMY, Origin.AUTOLEARN, Origin.SELFCHECK}
)
# Work another run started (a sub-agent, a pipeline task, the answer to a sub-agent's
# report): its message carries who started that run (``metadata[STARTED_BY_META]``).
CARRIED_ORIGINS = frozenset({Origin.SPAWN, Origin.PIPELINE})
STARTED_BY_META = "started_by"
# ``metadata["kind"]`` of a sub-agent's report to its parent session (claw_worker/work/spawn.py).
REPORT_KIND = "result"

# Replies to internal messages that nobody should receive go to this channel (never sent).
INTERNAL_CHANNEL = "internal"

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TEXT_FIELDS = ("text", "media", "reply_to", "metadata")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` (keys included) holds half of a UTF-16 surrogate pair.
    JSON may escape one alone (``"\\ud83e"``: an emoji cut by a device, a bridge, a
    platform); Python decodes it to a str no UTF-8 write takes, so a message holding one
    failed at its first store (a dropped connection, a 500 to a platform that then sent it
    again for days). Such halves are replaced by U+FFFD (:func:`replace_lone_surrogates`)."""
    pending = [value]  # a loop, not recursion: this runs for every message (~3 µs)
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii() and _LONE_SURROGATE.search(item) is not None:
                return True
        elif kind is dict:
            pending += item.keys()
            pending += item.values()
        elif kind is list:
            pending += item
    return False


def replace_lone_surrogates(value: Any) -> Any:
    """``value`` (a str, or lists and dicts of them) with every lone surrogate replaced by
    U+FFFD; what is not text is kept."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            replace_lone_surrogates(key): replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


class InboundMessage(BaseModel):
    """One message from a user (or from cron/heartbeat) for the agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=128)
    channel: str = Field(min_length=1, max_length=64)
    chat_id: str = Field(min_length=1, max_length=256)
    sender_id: str = Field("", max_length=256)
    session_key: str = Field("", max_length=512)
    text: str
    media: list[str] = []
    reply_to: str | None = None  # the platform id of the message this one answers (a quote)
    received_at: float = Field(default_factory=time.time)
    metadata: dict[str, Any] = {}

    def model_post_init(self, _context: Any) -> None:
        # Every channel's message is made storable here, whichever JSON it came from (the
        # constrained fields refuse a lone surrogate themselves).
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value and _has_lone_surrogate(value):
                object.__setattr__(self, name, replace_lone_surrogates(value))
        if not self.session_key:
            object.__setattr__(self, "session_key", f"{self.channel}:{self.chat_id}")

    @property
    def origin(self) -> Origin:
        try:
            return Origin(self.metadata.get("origin") or Origin.USER)
        except ValueError:
            return Origin.USER

    @property
    def started_by(self) -> Origin:
        """Who started the work this message belongs to: its own origin, or for a sub-agent's
        or pipeline task's message (and a report's), the one carried from the run that
        started it, down any depth (a user when none is carried). Only the worker sets
        metadata, as for ``origin``."""
        if self.origin not in CARRIED_ORIGINS:
            return self.origin
        try:
            return Origin(self.metadata.get(STARTED_BY_META) or Origin.USER)
        except ValueError:
            return Origin.USER


def reply_route(message: InboundMessage, status: MessageStatus, text: str) -> tuple[str, str]:
    """(channel, chat_id) the reply to ``message`` goes to.

    The message's own chat, unless its metadata says otherwise: ``deliver`` ({"channel",
    "chat_id"}: a cron job's --deliver target, the heartbeat's chat), and ``quiet_ack``
    (a number: a successful reply that is ``HEARTBEAT_OK`` or no longer than that many
    characters is an acknowledgement nobody needs to see, routed to INTERNAL_CHANNEL), and
    ``quiet_failure`` (true: a failure is routed there too; the heartbeat sets it when the
    previous heartbeat failed, so a long outage is told once, not at every tick).
    """
    meta = message.metadata
    if meta.get("quiet_failure") is True and status is MessageStatus.FAILED:
        return INTERNAL_CHANNEL, message.chat_id
    quiet = meta.get("quiet_ack")
    if quiet is not None and status is MessageStatus.DONE:
        stripped = text.strip()
        if stripped.startswith("HEARTBEAT_OK") or len(stripped) <= int(quiet):
            return INTERNAL_CHANNEL, message.chat_id
    deliver = meta.get("deliver")
    if isinstance(deliver, dict) and deliver.get("channel") and deliver.get("chat_id"):
        return str(deliver["channel"]), str(deliver["chat_id"])
    return message.channel, message.chat_id


def reply_target(message: InboundMessage) -> str | None:
    """The platform's id of ``message`` (adapters put it in ``metadata["platform_message_id"]``),
    so the answer can be threaded to it; None when the channel has none."""
    value = message.metadata.get("platform_message_id")
    return str(value) if value else None


class OutboundMessage(BaseModel):
    """A reply for a channel adapter to deliver; ``message_id`` is the one it answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str
    channel: str
    chat_id: str
    session_key: str
    text: str
    status: MessageStatus = MessageStatus.DONE
    reply_to: str | None = None
    metadata: dict[str, Any] = {}
