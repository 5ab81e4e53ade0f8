"""``cron``: the agent schedules, lists and removes cron jobs (reminders, periodic checks).

The same jobs as ``clawctl cron`` (``beat_schedules/cron_jobs.py``). A job's replies go to
the chat the agent was asked in, unless told otherwise. Guards: only a person's message
starts work that adds jobs. A run the fleet started by itself (a cron job, the heartbeat,
autonomous mode, auto-learning, the start-up self-check: ``contract.FLEET_ORIGINS``) cannot
add any, and so for the work it started (its sub-agents, the tasks of a pipeline it made,
its answers to their reports: their messages carry who started it,
``InboundMessage.started_by``, and their chain leads up to its session): else a job could
schedule more of itself, or an open item of HEARTBEAT.md add a job at every heartbeat. A
run a cron job started may remove only its own job; the agent removes only jobs it made
(the operator's are removed with clawctl); it has at most ``cron.max_agent_jobs`` at once.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, model_validator

from beat_schedules.cron_jobs import (
    DELIVER_CHANNELS,
    Deliver,
    JobError,
    add_job,
    check_deliver,
    find,
    list_jobs,
    make_schedule,
    remove_job,
)
from beat_schedules.cron_schedule import ScheduleError, format_time
from claw_worker import constants as k
from claw_worker.contract import FLEET_ORIGINS, Origin
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.work.model import parse_session
from claw_worker.work.origin import root_session

PREVIEW_CHARS = 60
STARTERS = {  # the fleet's own work, as the refusal names it
    Origin.CRON: "a cron job", Origin.HEARTBEAT: "the heartbeat",
    Origin.AUTONOMY: "autonomous mode", Origin.AUTOLEARN: "auto-learning",
    Origin.SELFCHECK: "the start-up self-check",
}  # fmt: skip


class CronParams(ToolParams):
    action: Literal["add", "list", "remove"]
    name: str | None = Field(None, max_length=64, description="add: a short name for the job.")
    message: str | None = Field(
        None, max_length=8000,
        description="add: what you will be told when the job runs (write it as an instruction "
        "to yourself, e.g. 'Remind the user to call the bank').",
    )  # fmt: skip
    every_sec: int | None = Field(None, ge=1, description="add: run every N seconds.")
    cron: str | None = Field(
        None, max_length=120, description="add: a 5-field cron expression, e.g. '0 9 * * 1-5'."
    )
    at: str | None = Field(
        None, max_length=64, description="add: run once at this ISO-8601 time (a reminder)."
    )
    in_sec: int | None = Field(
        None, ge=1, le=366 * 86400, description="add: run once, this many seconds from now."
    )
    tz: str | None = Field(
        None, max_length=64, description="add: IANA time zone of cron/at, e.g. Europe/Paris."
    )
    deliver: bool = Field(True, description="add: send the job's replies to this chat.")
    channel: str | None = Field(None, max_length=64, description="add: deliver to this channel.")
    chat_id: str | None = Field(
        None, max_length=256, description="add: the chat id on that channel."
    )
    job_id: str | None = Field(None, max_length=32, description="remove: the job's id.")

    @model_validator(mode="after")
    def _needs(self) -> CronParams:
        if self.action == "add" and not (self.name and self.message):
            raise ValueError("add needs name and message, and one of every_sec, cron or at")
        if self.action == "remove" and not self.job_id:
            raise ValueError("remove needs job_id (see action=list)")
        if self.at is not None and self.in_sec is not None:
            raise ValueError("give at or in_sec, not both")
        if (self.channel is None) != (self.chat_id is None):
            raise ValueError("channel and chat_id go together")
        return self


class CronTool(Tool[CronParams]):
    name = "cron"
    description = (
        "Schedule messages to yourself: reminders (at, or in_sec from now), periodic checks "
        "(every_sec) or cron expressions (cron, with tz). When a job runs you get its "
        "message in a session of its own, and your reply goes to this chat. Actions: add, "
        "list, remove (by job_id)."
    )
    Params = CronParams

    def execute(self, params: CronParams, ctx: ToolContext) -> str:
        if ctx.redis is None:
            raise ToolError("cron needs the fleet (no Redis connection in this run)")
        try:
            if params.action == "list":
                return self._list(ctx)
            if params.action == "remove":
                return self._remove(params, ctx)
            return self._add(params, ctx)
        except (JobError, ScheduleError) as exc:
            raise ToolError(str(exc)) from None

    def _add(self, params: CronParams, ctx: ToolContext) -> str:
        assert ctx.redis is not None and params.name and params.message
        starter, _ = _started(ctx)
        if starter is not None:
            raise ToolError(f"a run started by {STARTERS[starter]} cannot create jobs")
        now = time.time()
        at_time = params.at
        if params.in_sec is not None:
            at_time = datetime.fromtimestamp(math.ceil(now) + params.in_sec, UTC).isoformat()
        schedule = make_schedule(
            ctx.config, every_sec=params.every_sec, expr=params.cron, at_time=at_time,
            tz=params.tz, now=now, names=("every_sec", "cron", "at/in_sec"),
        )  # fmt: skip
        target = self._target(params, ctx)
        job, first = add_job(
            ctx.redis, ctx.config, name=params.name, message=params.message, schedule=schedule,
            deliver=target, created_by="agent", created_in=ctx.session_key,
        )  # fmt: skip
        where = f"replies go to {target.channel}:{target.chat_id}" if target else (
            "replies are not delivered to any chat"
        )  # fmt: skip
        return (f"Added job {job.id} ({job.name}): {schedule.describe()}; first run "
                f"{format_time(first, schedule.tz)}; {where}.")  # fmt: skip

    def _target(self, params: CronParams, ctx: ToolContext) -> Deliver | None:
        if params.channel is not None and params.chat_id is not None:
            return check_deliver(ctx.config, params.channel.strip().lower(), params.chat_id)
        if not params.deliver or not ctx.message_id:
            return None
        assert ctx.redis is not None
        # The chat of the message this run answers (stored with it by the enqueue).
        channel, chat_id = ctx.redis.hmget(
            k.message_key(ctx.session_key, ctx.message_id), "channel", "chat_id"
        )
        if channel not in DELIVER_CHANNELS or not chat_id:
            return None  # the HTTP API, or an internal run: nobody to deliver to
        return check_deliver(ctx.config, channel, chat_id)

    def _list(self, ctx: ToolContext) -> str:
        assert ctx.redis is not None
        rows = list_jobs(ctx.redis)
        if not rows:
            return "No cron jobs."
        lines = []
        for job, nxt in rows:
            tz = job.schedule.tz
            text = job.message if len(job.message) <= PREVIEW_CHARS else (
                job.message[:PREVIEW_CHARS] + "..."
            )  # fmt: skip
            lines.append(
                f"- {job.id} {job.name!r}: {job.schedule.describe()}; "
                f"next {format_time(nxt, tz) if nxt else '-'}; last "
                f"{job.last_status or 'never run'}; {'enabled' if job.enabled else 'disabled'}; "
                f"made by {job.created_by}; message: {text}"
            )
        return "\n".join(lines)

    def _remove(self, params: CronParams, ctx: ToolContext) -> str:
        assert ctx.redis is not None and params.job_id
        job = find(ctx.redis, params.job_id)
        _, root = _started(ctx)
        if root and root != job.session_key:
            raise ToolError("a run started by a cron job may remove only its own job")
        if job.created_by != "agent":
            raise ToolError(f"job {job.id} was made by the operator; only `clawctl cron "
                            "remove` removes it")  # fmt: skip
        remove_job(ctx.redis, job.id)
        return f"Removed job {job.id} ({job.name})."


def _started(ctx: ToolContext) -> tuple[Origin | None, str]:
    """Which of the fleet's own work started this run (None: a person's message), and the
    session of the cron job that did ("" none). Known from the run's message (its origin,
    or the start a sub-agent's, task's or report's message carries) and from the session
    at the root of its chain (a cron job's ``cron:<id>``, ``heartbeat:main``, ...), which
    also covers work started before messages carried their start."""
    assert ctx.redis is not None
    root = root_session(ctx.redis, ctx.session_key)
    # A task of an expired pipeline is its own root: its start is lost, so it may have been
    # a cron job's: treated as one (refused).
    if root.startswith(k.CRON_SESSION_PREFIX) or parse_session(root) is not None:
        return Origin.CRON, root
    if ctx.origin == Origin.CRON.value:
        return Origin.CRON, ctx.session_key
    for started in (ctx.started_by, root.partition(":")[0]):  # fleet sessions: <origin>:...
        if started in FLEET_ORIGINS:
            return Origin(started), ""
    return None, ""
