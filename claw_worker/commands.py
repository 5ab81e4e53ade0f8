"""Slash commands, answered out of band (by the ingress, and by `clawctl agent` locally): they never wait behind the session's
queue (``/stop`` ends the reply the queue is waiting on; ``/status`` must answer while a run
is busy). One registry: a new command is one ``@command`` function here.

Commands that read or change the fleet's config (``/config``, ``/reload``) are registered
``admin=True`` and run only for an admin (:attr:`CommandContext.admin`): the operator at
``clawctl agent``, or a sender :func:`is_admin` accepts. Everything else acts on the
sender's own session only (another session's runs are shown to admins only).

Natural-language requests for the same things ("show the latest run", "tell me when
run-… finishes") are mapped onto these commands by :func:`match_intent`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.config import Config, ConfigError, config_path
from claw_worker.config import store as config_store
from claw_worker.config.fleet import change_config, reload_config
from claw_worker.session.runs import FINISHED, describe_run, read_run, resolve_run_id
from claw_worker.session.stop import request_stop

WAIT_DEFAULT_SEC = 60.0
WAIT_MAX_SEC = 600.0
LANG_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
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
    admin: bool  # reads or changes the fleet's config: admins only


COMMANDS: dict[str, Command] = {}


def command(
    name: str, usage: str, summary: str, *, admin: bool = False
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


def admin_refusal(ctx: CommandContext, name: str) -> str:
    """The answer to an admin command from someone who is not one: why, and how to allow it."""
    sender = f"{ctx.channel}:{ctx.sender_id}" if ctx.channel and ctx.sender_id else ""
    example = shlex.quote(json.dumps([sender or f"{ctx.channel or API_CHANNEL}:alice"]))
    lines = [
        f"{name} is for admins only: it reads or changes the fleet's configuration.",
        "Run it in `clawctl agent` on a fleet host (the operator there is an admin), or use "
        "`clawctl config`.",
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
        return f"Unknown command {name}.\n{help_text()}"
    if found.admin and not ctx.admin:
        return admin_refusal(ctx, name)
    return await found.handler(ctx, args)


# -- natural language ------------------------------------------------------------------------

_RUN_ID = r"(run-\d+-\d+|latest)"
_INTENTS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]] = [
    (
        re.compile(
            rf"(tell me|notify me|let me know|wait)\b.*?\b{_RUN_ID}?.*(finish|done|complete)", re.I
        ),
        lambda m: ["wait", m.group(2) or "latest"],
    ),
    (re.compile(rf"等待?\s*{_RUN_ID}?.*完成"), lambda m: ["wait", m.group(1) or "latest"]),
    (
        re.compile(rf"(show|what('s| is)|status of)\b.*\b(latest run|last run|{_RUN_ID})", re.I),
        lambda m: ["run", m.group(4) or "latest"],
    ),
    (re.compile(r"(看看|查看).*(最新|最近).*run", re.I), lambda m: ["run", "latest"]),
]


def match_intent(text: str, config: Config) -> tuple[str, list[str]] | None:
    if len(text) > config.agents.defaults.runtime_control.intent_max_input_chars:
        return None
    for pattern, to_args in _INTENTS:
        found = pattern.search(text)
        if found:
            return "/status", to_args(found)
    return None


# -- the commands ----------------------------------------------------------------------------


@command("/help", "/help", "this list")
async def _help(ctx: CommandContext, args: list[str]) -> str:
    return help_text()


@command("/stop", "/stop", "stop the current reply; queued messages go on")
async def _stop(ctx: CommandContext, args: list[str]) -> str:
    await request_stop(ctx.redis, ctx.session_key)
    return ctx.config.agents.defaults.texts.stop_requested


@command(
    "/status",
    "/status [run [id|latest] | wait <id|latest> [seconds]]",
    "this session, a run, or wait for a run to finish",
)
async def _status(ctx: CommandContext, args: list[str]) -> str:
    if not args:
        return await _session_status(ctx)
    sub, rest = args[0].lower(), args[1:]
    if sub == "run" and len(rest) <= 1:
        return await _run_status(ctx, rest[0] if rest else "latest")
    if sub == "wait" and 1 <= len(rest) <= 2:
        try:
            timeout = float(rest[1]) if len(rest) == 2 else WAIT_DEFAULT_SEC
        except ValueError:
            return f"'{rest[1]}' is not a number of seconds."
        if not 0 < timeout <= WAIT_MAX_SEC:
            return f"The wait must be between 0 and {WAIT_MAX_SEC:g} seconds."
        return await _wait_run(ctx, rest[0], timeout)
    return f"Usage: {COMMANDS['/status'].usage}"


async def _session_status(ctx: CommandContext) -> str:
    sk = ctx.session_key
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.llen(k.mailbox_key(sk))
        pipe.exists(k.lease_key(sk))
        pipe.get(k.latest_run_key(sk))
        waiting, busy, latest = await pipe.execute()
    lines = [
        f"session {sk}: {'running' if busy else 'idle'}, {waiting} message(s) waiting",
    ]
    run = await read_run(ctx.redis, latest) if latest else None
    lines.append(describe_run(run) if run else "no runs yet")
    return "\n".join(lines)


async def _visible_run(ctx: CommandContext, run_id: str) -> dict[str, str] | None:
    """The run, if this sender may see it: its own session's, or any for an admin (a run
    names its session and message, and the message id reads the message's text)."""
    run = await read_run(ctx.redis, run_id)
    if run is None or (run.get("session_key") != ctx.session_key and not ctx.admin):
        return None
    return run


async def _run_status(ctx: CommandContext, ref: str) -> str:
    run_id = await resolve_run_id(ctx.redis, ctx.session_key, ref)
    run = await _visible_run(ctx, run_id) if run_id else None
    return describe_run(run) if run else f"No run {ref} (runs are kept for a limited time)."


async def _wait_run(ctx: CommandContext, ref: str, timeout: float) -> str:
    run_id = await resolve_run_id(ctx.redis, ctx.session_key, ref)
    if run_id is None:
        return f"No run {ref} (runs are kept for a limited time)."
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await _visible_run(ctx, run_id)
        if run is None:
            return f"No run {run_id} (runs are kept for a limited time)."
        if run.get("status") in FINISHED:
            return describe_run(run)
        if loop.time() >= deadline:
            return f"Still running after {timeout:g}s:\n{describe_run(run)}"
        await asyncio.sleep(0.2)


@command(
    "/config",
    "/config get <path> | /config set <path> <value>",
    "read or change the config",
    admin=True,
)
async def _config(ctx: CommandContext, args: list[str]) -> str:
    usage = f"Usage: {COMMANDS['/config'].usage}"
    path = config_path()
    try:
        if len(args) == 2 and args[0] == "get":
            value = config_store.get_path(config_store.load_config(path), args[1])
            masked = config_store.mask_secrets(value, args[1])
            return json.dumps(masked, ensure_ascii=False, indent=2)
        if len(args) >= 3 and args[0] == "set":
            # Writes the file and waits for every process's answer: off the event loop.
            result = await asyncio.to_thread(change_config, path, args[1], " ".join(args[2:]))
            return result.message
    except ConfigError as exc:
        return f"Not changed: {exc}"
    return usage


@command("/reload", "/reload", "re-read the config file in every running process", admin=True)
async def _reload(ctx: CommandContext, args: list[str]) -> str:
    if args:
        return f"Usage: {COMMANDS['/reload'].usage}"
    try:
        result = await asyncio.to_thread(reload_config, config_path())
    except ConfigError as exc:
        return f"Not reloaded: {exc}"
    return result.message


@command("/lang", "/lang <code>", "the language replies should use (e.g. en, zh-CN)")
async def _lang(ctx: CommandContext, args: list[str]) -> str:
    texts = ctx.config.agents.defaults.texts
    if len(args) != 1:
        return texts.lang_usage
    if not LANG_CODE.match(args[0]):
        return texts.lang_invalid
    await ctx.redis.set(k.lang_key(ctx.session_key), args[0])
    return texts.lang_updated_template % args[0]
