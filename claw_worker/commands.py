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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.autonomy_state import (
    Autolearn,
    Autonomy,
    describe_autolearn,
    describe_autonomy,
    human,
    last_active,
    own_chat,
    parse_interval,
)
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
# Autonomy and auto-learning, asked for at the start of a message ("start autonomous mode,
# check every 30 minutes", "stop auto-learning", "开始自主模式，每30分钟检查一次").
_LEAD = r"^\W*(?:(?:please|pls|ok|okay|now|can you|could you)\W+)*"
_ON = r"(?:start|enable|turn on|switch on|begin|enter|resume|go into)\s+(?:the\s+)?"
_OFF = r"(?:stop|disable|turn off|switch off|end|exit|leave|quit|pause)\s+(?:the\s+)?"
_EVERY = r"(?:.*?\b(?:every|each)\s*(?P<n>\d{1,7})\s*(?P<unit>[a-z]+))?"
_ZH_ON = r"^\W*请?(?:开始|开启|启动|进入|打开)\s*"
_ZH_OFF = r"^\W*请?(?:停止|关闭|退出|结束|停掉|暂停)\s*"
_ZH_EVERY = r"(?:.*?每隔?\s*(?P<n>\d{1,7})\s*(?P<unit>秒钟?|分钟?|个?小时|钟头))?"
_AUTONOMY, _LEARN = r"autonom(?:ous|y)(?:\s+mode)?\b", r"auto[- ]?learn(?:ing)?\b"


def _switch(name: str, on: bool) -> Callable[[re.Match[str]], list[str]]:
    def to_args(found: re.Match[str]) -> list[str]:
        if not on:
            return [name, "off"]
        every = ["every", found["n"], found["unit"]] if found["n"] else []
        return [name, "on", *every]

    return to_args


_INTENTS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]] = [
    (re.compile(_LEAD + _ON + _AUTONOMY + _EVERY, re.I), _switch("/autonomy", True)),
    (re.compile(_LEAD + _OFF + _AUTONOMY, re.I), _switch("/autonomy", False)),
    (re.compile(_LEAD + _ON + _LEARN + _EVERY, re.I), _switch("/autolearn", True)),
    (re.compile(_LEAD + _OFF + _LEARN, re.I), _switch("/autolearn", False)),
    (re.compile(_ZH_ON + "自主模式" + _ZH_EVERY), _switch("/autonomy", True)),
    (re.compile(_ZH_OFF + "自主模式"), _switch("/autonomy", False)),
    (re.compile(_ZH_ON + "自动学习" + _ZH_EVERY), _switch("/autolearn", True)),
    (re.compile(_ZH_OFF + "自动学习"), _switch("/autolearn", False)),
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
            args = to_args(found)  # a leading "/name" picks the command; else /status
            return (args[0], args[1:]) if args and args[0][0] == "/" else ("/status", args)
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
        pipe.get(k.SENTINEL_REPORT)
        waiting, busy, latest, sentinel = await pipe.execute()
    lines = [
        f"session {sk}: {'running' if busy else 'idle'}, {waiting} message(s) waiting",
    ]
    run = await read_run(ctx.redis, latest) if latest else None
    lines.append(describe_run(run) if run else "no runs yet")
    lines.append(sentinel_line(sentinel))
    return "\n".join(lines)


def sentinel_line(raw: str | None) -> str:
    """The Sentinel's last report (beat_schedules/sentinel.py) in one line."""
    if not raw:
        return "sentinel: no report yet"
    try:
        report = json.loads(raw)
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(report["time"])))
        return f"sentinel ({at}): {report['summary']}"
    except (ValueError, TypeError, KeyError):
        return "sentinel: unreadable report"


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


# -- autonomy and auto-learning (state: autonomy_state.py; the work: beat_schedules/) -------
# Autonomy acts on the sender's own chat, so anyone allowed to talk to the agent may turn it
# on for their chat (its limits bound what it costs) and off again; taking it over from
# another chat, or turning it on from where no report can reach (the HTTP API, a terminal:
# then it works for the last active chat), is for admins. Auto-learning reads every
# session's runs and writes the shared memory: admins only.


@command("/autonomy", "/autonomy on [every <N> minutes] | off | status",
         "work on this chat's unfinished tasks by myself while you are away")  # fmt: skip
async def _autonomy(ctx: CommandContext, args: list[str]) -> str:
    sub = args[0].lower() if args else "status"
    if sub not in ("on", "off", "status") or (sub != "on" and len(args) > 1):
        return f"Usage: {COMMANDS['/autonomy'].usage}"
    raw, now = await ctx.redis.hgetall(k.AUTONOMY), time.time()
    state, control = Autonomy.from_hash(raw), ctx.config.agents.defaults.runtime_control
    mine = state.session_key == ctx.session_key
    if sub == "status":
        return "\n".join((describe_autonomy(state, control, now, show_chat=mine or ctx.admin),
                          describe_autolearn(Autolearn.from_hash(raw), control, now)))  # fmt: skip
    if state.enabled and not mine and not ctx.admin:
        return "Autonomous mode is working for another chat; only an admin can change that."
    if sub == "off":
        if not state.enabled:
            return "Autonomous mode is already off."
        await ctx.redis.hset(k.AUTONOMY, mapping=state.stop("turned off", now).to_hash())
        return "Autonomous mode off."
    try:
        interval = parse_interval(args[1:])
    except ValueError as exc:
        return f"{exc}.\nUsage: {COMMANDS['/autonomy'].usage}"
    chat = own_chat(ctx.channel, ctx.chat_id, ctx.session_key)
    if chat is None and ctx.admin:
        chat = last_active(await ctx.redis.get(k.LAST_ACTIVE))
    if chat is None:
        return (
            "Autonomous mode reports to a chat, and replies cannot reach this one; turn it on "
            "from a chat (or as an admin here once someone has written in one)."
        )
    await ctx.redis.hset(k.AUTONOMY, mapping=Autonomy.start(chat, interval, now).to_hash())
    where = "this chat" if chat.session_key == ctx.session_key else chat.label()
    every = human(max(interval, control.autonomy_min_run_interval_sec))
    return (
        f"Autonomous mode on for {where}: once you have been away "
        f"{human(control.autonomy_idle_threshold_sec)}, I work on what is unfinished, a round "
        f"at most every {every}. I stop after "
        f"{control.autonomy_max_rounds_without_user} rounds without you or "
        f"{control.autonomy_max_consecutive_stalls} in a row without progress; "
        'say "stop autonomous mode" to stop now.'
    )


@command("/autolearn", "/autolearn on [every <N> minutes] | off | status",
         "review recent runs on my own and save procedures to memory", admin=True)  # fmt: skip
async def _autolearn(ctx: CommandContext, args: list[str]) -> str:
    sub = args[0].lower() if args else "status"
    if sub not in ("on", "off", "status") or (sub != "on" and len(args) > 1):
        return f"Usage: {COMMANDS['/autolearn'].usage}"
    state, now = Autolearn.from_hash(await ctx.redis.hgetall(k.AUTONOMY)), time.time()
    control = ctx.config.agents.defaults.runtime_control
    if sub == "status":
        return describe_autolearn(state, control, now)
    if sub == "off":
        if not state.enabled:
            return "Auto-learning is already off."
        await ctx.redis.hset(k.AUTONOMY, mapping=state.stop("turned off", now).to_hash())
        return "Auto-learning off."
    try:
        interval = parse_interval(args[1:])
    except ValueError as exc:
        return f"{exc}.\nUsage: {COMMANDS['/autolearn'].usage}"
    chat = own_chat(ctx.channel, ctx.chat_id, ctx.session_key)
    await ctx.redis.hset(k.AUTONOMY, mapping=Autolearn.start(chat, interval, now).to_hash())
    return (
        "Auto-learning on: while you are away I review new runs and save what is worth reusing "
        f"as procedures; I stop after {control.autolearn_max_rounds_without_user} rounds "
        'without you. Say "stop auto-learning" to stop now.'
    )
