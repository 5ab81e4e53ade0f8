"""The messages sent to the model: system prompt (bootstrap files + runtime line), history,
then the new user message.

The bootstrap files are read on every turn: they live on the shared workspace volume and the
user edits them while the fleet runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from claw_worker.contract import InboundMessage

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
        path = workspace / name
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        if text:
            if len(text) > MAX_BOOTSTRAP_CHARS:
                text = text[:MAX_BOOTSTRAP_CHARS] + "\n... [truncated]"
            found.append((name, text))
    return found


def build_system_prompt(
    workspace: Path, message: InboundMessage, *, now: float | None = None
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z (%A)", time.localtime(now))
    parts = [
        IDENTITY,
        f"Current time: {when}. Workspace: {workspace}. "
        f"Channel: {message.channel}, chat: {message.chat_id}, session: {message.session_key}.",
    ]
    for name, text in read_bootstrap(workspace):
        parts.append(f"## {name}\n\n{text}")
    return "\n\n".join(parts)


def user_message(message: InboundMessage) -> Message:
    return {"role": "user", "content": message.text}


def build_messages(system_prompt: str, history: Sequence[Message], user: Message) -> list[Message]:
    return [{"role": "system", "content": system_prompt}, *history, user]
