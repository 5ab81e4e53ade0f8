"""The slash-command registry: what a command is, who may run it, and running one.

A command is one ``@command(name, usage, summary)`` coroutine in a module of this package
(``session.py``, ``admin.py``, ``autonomy.py``); the package imports them all.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from claw_worker.commands.intents import match_intent
from claw_worker.config import Config
from claw_worker.reply_filter import filter_reply

COMMAND_WORD = re.compile(r"^/[A-Za-z_]+(@\S+)?$")
API_CHANNEL = "api"  # the ingress's HTTP API, as a channel name in gateway.admins


@dataclass(frozen=True)
class CommandContext:
    redis: aioredis.Redis
    config: Config
    session_key: str
    # May run admin commands: True for the local operator (clawctl agent), else is_admin().
    admin: bool = False
    # Who sent the command, for the answer to a refused admin command ("" if unknown).
    channel: str = ""
    sender_id: str = ""
    chat_id: str = ""  # the chat it came from (where /autonomy on sends its rounds' reports)


def is_admin(config: Config, channel: str, sender_id: str) -> bool:
    """Whether a sender may run admin commands: ``<channel>:<sender_id>`` is listed in
    ``gateway.admins``, and the sender id is one someone vouches for. A chat platform
    vouches for its users' ids; the HTTP API's sender_id is the caller's own claim, so it
    counts only when ``gateway.token`` is set (the caller holds the operator's token and is
    trusted to name itself). No anonymous sender is ever an admin."""
    if not sender_id:
        return False
    if channel == API_CHANNEL and not config.gateway.token:
        return False
    return f"{channel}:{sender_id}" in config.gateway.admins


Handler = Callable[[CommandContext, list[str]], Awaitable[str]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    handler: Handler
    # Why only admins may run it, as the refusal says it ("it reads or changes ..."); "" for
    # a command anyone may run.
    admin: str


COMMANDS: dict[str, Command] = {}


def command(
    name: str, usage: str, summary: str, *, admin: str = ""
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, usage, summary, handler, admin)
        return handler

    return register


def help_text() -> str:
    lines = ["Commands:"]
    lines += [
        f"  {c.usage} - {c.summary}{' (admin)' if c.admin else ''}" for c in COMMANDS.values()
    ]
    return "\n".join(lines)


def admin_refusal(ctx: CommandContext, found: Command) -> str:
    """The answer to an admin command from someone who is not one: why, and how to allow it."""
    name = found.name
    sender = f"{ctx.channel}:{ctx.sender_id}" if ctx.channel and ctx.sender_id else ""
    example = shlex.quote(json.dumps([sender or f"{ctx.channel or API_CHANNEL}:alice"]))
    lines = [
        f"{name} is for admins only: {found.admin}.",
        "Run it in `clawctl agent` on a fleet host (the operator there is an admin).",
        f"To let {'this sender' if sender else 'a named sender'} run it, add it to "
        f"gateway.admins: clawctl config set gateway.admins {example}",
    ]
    if (ctx.channel or API_CHANNEL) == API_CHANNEL:
        if not ctx.config.gateway.token:
            lines.append(
                "Over the HTTP API that needs gateway.token too: without a token anyone can "
                "claim any sender_id, so no API caller is an admin."
            )
        elif not sender:
            lines.append("Over the HTTP API, send a sender_id with the message.")
    return "\n".join(lines)


ECHOED_CHARS = 64  # of an argument quoted back in a reply


def echoed(arg: str) -> str:
    """An argument as a reply quotes it: cut, so 100,000 characters sent do not come back."""
    return arg if len(arg) <= ECHOED_CHARS else arg[:ECHOED_CHARS] + "…"


def parse_command(text: str) -> tuple[str, list[str]] | None:
    """``("/name", args)`` when the text is a slash command, else None (a normal message).

    "/etc/hosts, what is it?" is not a command: the first word must be /letters only.
    """
    words = text.strip().split()
    if not words or not COMMAND_WORD.match(words[0]):
        return None
    # "/stop@MyBot" is how Telegram addresses a command to one bot in a group.
    return words[0].split("@", 1)[0].lower(), words[1:]


async def run_command(ctx: CommandContext, text: str) -> str | None:
    """The reply to a slash command or a recognised request, or None for a normal message."""
    parsed = parse_command(text) or match_intent(text, ctx.config)
    if parsed is None:
        return None
    name, args = parsed
    found = COMMANDS.get(name)
    if found is None:
        return f"Unknown command {echoed(name)}.\n{help_text()}"
    if found.admin and not ctx.admin:
        return admin_refusal(ctx, found)
    # /status, /config get, /pipeline ...: what they show may hold a secret (an error text).
    return filter_reply(ctx.config, await found.handler(ctx, args))
