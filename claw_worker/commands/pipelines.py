"""/pipeline list | status <id> | ready <id> | cancel <id>: the pipelines a chat made (every
one for an admin), in any channel. ``ready`` starts the tasks whose dependencies are done
(for a pipeline made with auto_dispatch off, or to nudge one whose worker died); ``cancel``
stops its running tasks and starts no other.

The store (``claw_worker/work/pipelines.py``) is synchronous, as the workers use it: the
command runs it in a thread, on a client of its own, off the ingress's event loop.
"""

from __future__ import annotations

import asyncio

import redis

from claw_worker.commands.registry import COMMANDS, CommandContext, command
from claw_worker.redis_conn import client, redis_url
from claw_worker.work import pipelines, prompts
from claw_worker.work.model import Pipeline, PipelineError

LISTED = 20
SUBCOMMANDS = ("status", "ready", "cancel")  # each with a pipeline id


@command("/pipeline", "/pipeline list | status <id> | ready <id> | cancel <id>",
         "pipelines of agent tasks: list them, show one, start its ready tasks, "
         "or stop it")  # fmt: skip
async def _pipeline(ctx: CommandContext, args: list[str]) -> str:
    sub = args[0].lower() if args else "list"
    if not ((sub == "list" and len(args) <= 1) or (sub in SUBCOMMANDS and len(args) == 2)):
        return f"Usage: {COMMANDS['/pipeline'].usage}"
    return await asyncio.to_thread(_run, ctx, sub, args[1] if len(args) == 2 else "")


def _visible(ctx: CommandContext, pipeline: Pipeline) -> bool:
    """Made in this session or this chat (by the agent, or by its sub-agents), or an admin."""
    creator = pipeline.creator
    same_chat = bool(ctx.channel) and (creator.channel, creator.chat_id) == (
        ctx.channel, ctx.chat_id
    )  # fmt: skip
    return ctx.admin or creator.session_key == ctx.session_key or same_chat


def _run(ctx: CommandContext, sub: str, pipeline_id: str) -> str:
    conn = client(redis_url(ctx.config), socket_timeout=10, socket_connect_timeout=5,
                  health_check_interval=0)  # fmt: skip
    try:
        if sub == "list":
            made_for = None if ctx.admin else pipelines.viewers(ctx.session_key, ctx.channel,
                                                                 ctx.chat_id)  # fmt: skip
            listed = pipelines.list_pipelines(conn, made_for=made_for)
            shown = [p for p in listed if _visible(ctx, p)][:LISTED]
            if not shown:
                return "No pipelines."
            return "Pipelines (newest first):\n" + "\n".join(
                f"- {prompts.summary_line(p)}" for p in shown
            )
        pipeline = pipelines.load(conn, pipeline_id)
        if not _visible(ctx, pipeline):
            raise pipelines.not_found(pipeline_id)
        if sub == "status":
            return prompts.describe(pipelines.reconcile(conn, ctx.config, pipeline))
        if sub == "cancel":
            who = ctx.sender_id or ctx.session_key
            pipeline, stopped = pipelines.cancel(conn, ctx.config, pipeline_id,
                                                 f"cancelled by {who} (/pipeline cancel)")  # fmt: skip
            return prompts.cancelled_text(pipeline, stopped)
        pipeline, started = pipelines.dispatch(conn, ctx.config, pipeline_id)
        return prompts.started_text(pipeline, started)
    except PipelineError as exc:
        return str(exc)
    except (redis.RedisError, OSError) as exc:
        return f"Pipelines are unavailable right now (Redis: {exc})."
    finally:
        conn.close()
