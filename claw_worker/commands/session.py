"""Commands about the sender's own session: /help, /stop, /status, /lang."""

from __future__ import annotations

import asyncio
import json
import time

from claw_worker import constants as k
from claw_worker.commands._lang_tag import normalize_lang_tag
from claw_worker.commands.registry import COMMANDS, CommandContext, command, echoed, help_text
from claw_worker.nodes.stats import describe as describe_dispatches
from claw_worker.nodes.stats import summarize as summarize_dispatches
from claw_worker.session.runs import FINISHED, describe_run, read_run, resolve_run_id
from claw_worker.session.stop import request_stop

WAIT_DEFAULT_SEC = 60.0
WAIT_MAX_SEC = 600.0


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
            return f"'{echoed(rest[1])}' is not a number of seconds."
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
        pipe.hgetall(k.NODES_STATS)
        waiting, busy, latest, sentinel, nodes = await pipe.execute()
    run = await read_run(ctx.redis, latest) if latest else None
    # A worker holds the lease for a moment each time it retries the keys: the run's own
    # state, not the lease, says whether the session waits for them.
    locked = run is not None and run.get("status") == "resource_lock"
    state = "waiting for resource keys" if locked else "running" if busy else "idle"
    lines = [f"session {sk}: {state}, {waiting} message(s) waiting"]
    lines.append(describe_run(run) if run else "no runs yet")
    lines.append(sentinel_line(sentinel))
    lines.append(f"nodes: {describe_dispatches(summarize_dispatches(nodes))}")
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
    return describe_run(run) if run else _no_run(ref)


def _no_run(ref: str) -> str:
    return f"No run {echoed(ref)} (runs are kept for a limited time)."


async def _wait_run(ctx: CommandContext, ref: str, timeout: float) -> str:
    run_id = await resolve_run_id(ctx.redis, ctx.session_key, ref)
    if run_id is None:
        return _no_run(ref)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await _visible_run(ctx, run_id)
        if run is None:
            return _no_run(run_id)
        if run.get("status") in FINISHED:
            return describe_run(run)
        if loop.time() >= deadline:
            return f"Still running after {timeout:g}s:\n{describe_run(run)}"
        await asyncio.sleep(0.2)


@command("/lang", "/lang <code>", "the language replies should use (e.g. en, zh-CN)")
async def _lang(ctx: CommandContext, args: list[str]) -> str:
    texts = ctx.config.agents.defaults.texts
    if len(args) != 1:
        return texts.lang_usage
    tag = normalize_lang_tag(args[0])
    if tag is None:
        return f'"{echoed(args[0])}": {texts.lang_invalid}'
    await ctx.redis.set(k.lang_key(ctx.session_key), tag)
    return texts.lang_updated_template % tag
