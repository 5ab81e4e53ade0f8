"""The messages sent to the model: system prompt (bootstrap files + runtime line + the
available skills + recalled memory + the compaction summary), history, then the new user
message.

The bootstrap files are read on every turn: they live on the shared workspace volume and the
user edits them while the fleet runs.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claw_worker.config.schema import AgentDefaults
from claw_worker.contract import InboundMessage, Origin
from claw_worker.fsutil import read_workspace_text
from claw_worker.memory.index import index_for
from claw_worker.providers.base import COMPACTION
from claw_worker.skills.prompt import skills_section
from claw_worker.work.prompts import role_section

log = logging.getLogger(__name__)

BOOTSTRAP_FILES = ("AGENTS.md", "SOUL.md", "USER.md")
MAX_BOOTSTRAP_CHARS = 20_000  # per file: a runaway file must not eat the context window

IDENTITY = (
    "You are clawfleet, a personal and operations AI agent. You act through the tools you "
    "are given; files you read or write are relative to your workspace."
)

Message = dict[str, Any]


def read_bootstrap(workspace: Path) -> list[tuple[str, str]]:
    """(name, text) for each bootstrap file present and non-empty, in a fixed order."""
    found = []
    for name in BOOTSTRAP_FILES:
        text = read_workspace_text(workspace, name, MAX_BOOTSTRAP_CHARS * 4)
        text = (text or "").strip()
        if text:
            if len(text) > MAX_BOOTSTRAP_CHARS:
                text = text[:MAX_BOOTSTRAP_CHARS] + "\n... [truncated]"
            found.append((name, text))
    return found


def build_system_prompt(
    workspace: Path,
    message: InboundMessage,
    *,
    now: float | None = None,
    memory: str = "",
    language: str = "",
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z (%A)", time.localtime(now))
    parts = [
        IDENTITY,
        f"Current time: {when}. Workspace: {workspace}. "
        f"Channel: {message.channel}, chat: {message.chat_id}, session: {message.session_key}.",
    ]
    for name, text in read_bootstrap(workspace):
        parts.append(f"## {name}\n\n{text}")
    role = role_section(message.metadata)  # a pipeline task's or a sub-agent's part
    if role:
        parts.append(role)
    skills = "" if message.origin is Origin.HEARTBEAT else skills_section(workspace)
    if skills:  # names and descriptions; the model reads a SKILL.md when it needs it
        parts.append(skills)
    if language:
        parts.append(f"Reply in the language with code {language} (set by the user with /lang).")
    if memory:
        parts.append(memory)
    return "\n\n".join(parts)


def wants_recall(text: str, keywords: Sequence[str]) -> bool:
    lowered = text.casefold()
    return any(k and k.casefold() in lowered for k in keywords)


def memory_recall(workspace: Path, text: str, defaults: AgentDefaults) -> str:
    """A "Relevant memory" block when the message asks to recall something, else "".

    Only on recall keywords: a search per turn would put loosely related notes into every
    prompt. A broken or locked index must not fail the turn, so errors only cost the block.
    """
    config = defaults.memory
    if not config.enabled or not wants_recall(text, defaults.texts.memory_recall_keywords):
        return ""
    try:
        hits = index_for(workspace).search(text, config.recall_limit, mode=config.search)
    except (sqlite3.Error, OSError):
        log.warning("memory recall failed in %s", workspace, exc_info=True)
        return ""
    if not hits:
        return ""
    lines = ["## Relevant memory", ""]
    size = 0
    for hit in hits:
        line = f"- [{hit.path}{' § ' + hit.heading if hit.heading else ''}] {hit.snippet}"
        size += len(line)
        if size > config.recall_max_chars and len(lines) > 2:
            break
        lines.append(line[: config.recall_max_chars])
    return "\n".join(lines)


QUOTE_CHARS = 500
MEDIA_SHOWN = 10


def user_message(message: InboundMessage) -> Message:
    """The user's turn as the model sees it: the text, the message it replies to (a channel
    puts it in ``metadata["reply_to_text"]``) and references to what came attached (the
    model cannot open them, but knows a photo or a file was sent)."""
    text = message.text
    quoted = str(message.metadata.get("reply_to_text") or "")
    if quoted:
        cut = "…" if len(quoted) > QUOTE_CHARS else ""
        text = f"[in reply to: {quoted[:QUOTE_CHARS]}{cut}]\n{text}"
    if message.media:
        shown = ", ".join(message.media[:MEDIA_SHOWN])
        more = (
            f" and {len(message.media) - MEDIA_SHOWN} more"
            if len(message.media) > MEDIA_SHOWN
            else ""
        )
        text = f"{text}\n[attachments: {shown}{more}]"
    return {"role": "user", "content": text}


def build_messages(system_prompt: str, history: Sequence[Message], user: Message) -> list[Message]:
    """System, history, user. A compaction summary (a system message at the head of the
    history) joins the system prompt: some protocols accept only one leading system text.
    Its native compaction items (see ``providers.base.COMPACTION``) come along."""
    head = 0
    parts = [system_prompt]
    system: Message = {"role": "system"}
    while head < len(history) and history[head].get("role") == "system":
        parts.append(str(history[head].get("content") or ""))
        if COMPACTION in history[head]:
            system[COMPACTION] = history[head][COMPACTION]
        head += 1
    system["content"] = "\n\n".join(p for p in parts if p)
    return [system, *history[head:], user]
