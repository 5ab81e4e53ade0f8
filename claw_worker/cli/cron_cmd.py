"""``clawctl cron list|add|enable|disable|remove``: messages the agent gets on a schedule.

Jobs live in Redis (``beat_schedules/cron_jobs.py``) and take effect at once: the running
beat reads the job's entry within a second; nothing restarts. A job fires its message into
its own session (``cron:<id>``); with ``-d --channel NAME --to ID`` the agent's reply goes to
that chat.
"""

from __future__ import annotations

import json
import time

import click
import redis

from claw_worker.cli._common import CliError, load
from claw_worker.redis_conn import client, redis_url


def _redis() -> redis.Redis:
    conn = client(redis_url(load()), socket_timeout=5, socket_connect_timeout=2)
    conn.ping()  # one clear error now rather than half an answer
    return conn


def _when(epoch: float | None, tz: str) -> str:
    from beat_schedules.cron_schedule import format_time

    return format_time(epoch, tz) if epoch is not None else "-"


@click.group()
def cron() -> None:
    """Scheduled jobs: a message for the agent every N seconds, on a cron expression, or once."""


@cron.command("list")
@click.option("--json", "as_json", is_flag=True, help="Every field of every job, as JSON.")
def list_cmd(as_json: bool) -> None:
    """Every job: id, name, schedule, next run, last run, last status, enabled."""
    from beat_schedules.cron_jobs import list_jobs

    rows = list_jobs(_redis())
    if as_json:
        click.echo(json.dumps([{**job.model_dump(mode="json"), "next_run": nxt}
                               for job, nxt in rows], indent=2))  # fmt: skip
        return
    if not rows:
        click.echo("no cron jobs; add one with `clawctl cron add -n NAME -m MESSAGE -e SECONDS`")
        return
    table = [("ID", "NAME", "SCHEDULE", "NEXT RUN", "LAST RUN", "LAST STATUS", "ENABLED")]
    for job, nxt in rows:
        tz = job.schedule.tz
        status = job.last_status or "-"
        if job.consecutive_failures > 1:
            status += f" x{job.consecutive_failures}"
        table.append((job.id, job.name, job.schedule.describe(), _when(nxt, tz),
                      _when(job.last_run_at, tz), status, "yes" if job.enabled else "no"))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@cron.command("add")
@click.option("-n", "--name", required=True, help="A name for the job.")
@click.option("-m", "--message", required=True, help="What the agent is told when it runs.")
@click.option("-e", "--every", "every_sec", type=int, help="Run every SECONDS.")
@click.option("-c", "--cron", "expr", help='Run on a cron expression, e.g. "0 9 * * 1-5".')
@click.option("--at", "at_time", help="Run once at an ISO-8601 time, e.g. 2025-06-01T09:00.")
@click.option("--tz", help="Time zone of --cron and --at (default: cron.timezone, UTC).")
@click.option("-d", "--deliver", is_flag=True, help="Send the replies to --channel/--to.")
@click.option("--channel", help="The channel to deliver to (with -d), e.g. telegram.")
@click.option("--to", "chat_id", help="The chat id to deliver to (with -d).")
def add_cmd(
    name: str, message: str, every_sec: int | None, expr: str | None, at_time: str | None,
    tz: str | None, deliver: bool, channel: str | None, chat_id: str | None,
) -> None:  # fmt: skip
    """Add a job (exactly one of -e, -c, --at); it is live at once."""
    from beat_schedules.cron_jobs import JobError, add_job, check_deliver, make_schedule
    from beat_schedules.cron_schedule import ScheduleError

    config = load()
    if deliver and not (channel and chat_id):
        raise CliError("-d/--deliver needs --channel NAME and --to ID")
    if not deliver and (channel or chat_id):
        raise CliError("--channel and --to go with -d/--deliver (add -d to deliver the replies)")
    try:
        schedule = make_schedule(
            config, every_sec=every_sec, expr=expr, at_time=at_time, tz=tz, now=time.time(),
            names=("-e/--every", "-c/--cron", "--at"),
        )  # fmt: skip
        target = check_deliver(config, channel, chat_id) if channel and chat_id else None
        job, first = add_job(_redis(), config, name=name, message=message, schedule=schedule,
                             deliver=target)  # fmt: skip
    except (JobError, ScheduleError) as exc:
        raise CliError(str(exc)) from None
    where = f", replies to {target.channel}:{target.chat_id}" if target else ""
    off = "" if config.cron.enabled else " (cron.enabled is false: it will not fire until set)"
    click.echo(f"added job {job.id} ({job.name}): {schedule.describe()}; next run "
               f"{_when(first, schedule.tz)}{where}{off}")  # fmt: skip


def _switch(job_id: str, enabled: bool) -> None:
    from beat_schedules.cron_jobs import JobError, set_enabled

    try:
        job, nxt = set_enabled(_redis(), job_id, enabled)
    except JobError as exc:
        raise CliError(str(exc)) from None
    if enabled:
        click.echo(f"enabled job {job.id} ({job.name}); next run {_when(nxt, job.schedule.tz)}")
    else:
        click.echo(f"disabled job {job.id} ({job.name}); it stays in the list")


@cron.command("enable")
@click.argument("job_id")
def enable_cmd(job_id: str) -> None:
    """Enable job JOB_ID again (failures forgotten; an every-N job counts from now)."""
    _switch(job_id, True)


@cron.command("disable")
@click.argument("job_id")
def disable_cmd(job_id: str) -> None:
    """Stop job JOB_ID firing; keep it."""
    _switch(job_id, False)


@cron.command("remove")
@click.argument("job_id")
def remove_cmd(job_id: str) -> None:
    """Delete job JOB_ID."""
    from beat_schedules.cron_jobs import JobError, remove_job

    try:
        job = remove_job(_redis(), job_id)
    except JobError as exc:
        raise CliError(str(exc)) from None
    click.echo(f"removed job {job.id} ({job.name})")
