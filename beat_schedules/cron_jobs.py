"""Cron jobs in Redis: the job records and their RedBeat entries, and the operations on
them that ``clawctl cron`` and the agent's ``cron`` tool share.

A job is JSON in the hash ``constants.CRON_JOBS`` (id -> job). Its timing is one RedBeat
entry, ``cron:<id>``: a one-shot (an rrule with count=1, which RedBeat stores) for the job's
next due time, with that time as the task's ``due`` argument. Beat fires it and re-arms it
for the following due time at once (``cron.rearm``), so a job needs no beat restart and
survives a beat failover with the rest of RedBeat's schedule. Why one-shots rather than
RedBeat's own crontab or rrule: RedBeat evaluates a crontab in the app's time zone (UTC)
and stores an rrule's start with a fixed UTC offset, so neither keeps 09:00 Europe/Paris
at 09:00 across daylight saving; the next time is computed here (``cron_schedule.py``),
and a job's next run is exactly its entry's score in RedBeat's schedule.

Every change to a job and its entry is one MULTI under WATCH of the jobs hash (and the
entry), so a job disabled or removed meanwhile never keeps, or gets back, an entry.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from pydantic import BaseModel, ConfigDict

from beat_schedules.cron_schedule import Schedule, at, cron, every
from claw_worker import constants as k
from claw_worker.config.channels import ChannelsConfig
from claw_worker.config.schema import Config

MAX_NAME_CHARS = 64
MAX_MESSAGE_CHARS = 8000
DELIVER_CHANNELS = ("ws", *ChannelsConfig.model_fields)


class JobError(ValueError):
    """An operation on a job that cannot be done; the message says why."""


class Deliver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    chat_id: str


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    message: str
    schedule: Schedule
    deliver: Deliver | None = None  # where the replies go; None: nowhere (kept in its session)
    enabled: bool = True
    created_at: float
    created_by: str = "cli"  # "cli" or "agent"
    created_in: str = ""  # the session whose agent made it
    last_run_at: float | None = None  # when it last fired
    last_due_at: int | None = None  # the due time of that fire
    last_status: str = ""  # fired (running), done, failed, cancelled
    last_error: str = ""
    consecutive_failures: int = 0
    retry_at: int | None = None  # a failed run is retried then
    run_message_id: str = ""  # the message of the run under way
    skipped: int = 0  # fires skipped: the previous run was still going, or cron disabled

    @property
    def session_key(self) -> str:
        return f"{k.CRON_SESSION_PREFIX}{self.id}"


def entry_name(job_id: str) -> str:
    return f"{k.CRON_ENTRY_PREFIX}{job_id}"


def entry_key(job_id: str) -> str:
    return f"{k.BEAT_KEY_PREFIX}{entry_name(job_id)}"


def _definition(job_id: str, due: int) -> str:
    """RedBeat's stored form of the entry (what ``RedBeatSchedulerEntry.save`` writes)."""
    return json.dumps({
        "name": entry_name(job_id), "task": k.TASK_CRON_FIRE, "args": [job_id],
        "kwargs": {"due": due}, "options": {"queue": k.QUEUE_CRON}, "enabled": True,
        "schedule": {"__type__": "rrule", "freq": 0, "count": 1, "dtstart": due, "dtstart_tz": 0},
    })  # fmt: skip


@dataclass
class Change:
    """What to write for one job: the new record (or remove it), and its entry."""

    job: Job | None = None
    remove: bool = False
    arm: int | None = None  # arm the entry for this due time
    disarm: bool = False


def change_job(
    client: redis.Redis, job_id: str, decide: Callable[[Job | None, int | None], Change | None]
) -> Change | None:
    """Apply ``decide(job, next run)`` to a job atomically; retried when the jobs hash or the
    entry changed meanwhile. ``decide`` may run more than once: it must only decide."""
    key = entry_key(job_id)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(k.CRON_JOBS, key)
                raw = pipe.hget(k.CRON_JOBS, job_id)
                score = pipe.zscore(k.BEAT_SCHEDULE, key)
                armed = int(score) if score is not None and score >= 0 else None
                change = decide(Job.model_validate_json(raw) if raw else None, armed)
                pipe.multi()
                if change is not None:
                    _stage(pipe, job_id, change)
                pipe.execute()
                return change
            except redis.WatchError:
                continue


def _stage(pipe: redis.client.Pipeline, job_id: str, change: Change) -> None:
    key = entry_key(job_id)
    if change.remove:
        pipe.hdel(k.CRON_JOBS, job_id)
    elif change.job is not None:
        pipe.hset(k.CRON_JOBS, job_id, change.job.model_dump_json())
    if change.arm is not None:
        pipe.hset(key, mapping={"definition": _definition(job_id, change.arm),
                                "meta": json.dumps({"last_run_at": None})})  # fmt: skip
        pipe.zadd(k.BEAT_SCHEDULE, {key: change.arm})
    elif change.disarm or change.remove:
        pipe.zrem(k.BEAT_SCHEDULE, key)
        pipe.delete(key)


def load(client: redis.Redis, job_id: str) -> Job | None:
    raw = client.hget(k.CRON_JOBS, job_id)
    return Job.model_validate_json(raw) if raw else None


def next_run(client: redis.Redis, job_id: str) -> int | None:
    """When the job fires next: its entry's due time in RedBeat's schedule (None: never)."""
    score = client.zscore(k.BEAT_SCHEDULE, entry_key(job_id))
    return int(score) if score is not None and score >= 0 else None


def list_jobs(client: redis.Redis) -> list[tuple[Job, int | None]]:
    """Every job with its next run, oldest first."""
    jobs = [Job.model_validate_json(raw) for raw in client.hvals(k.CRON_JOBS)]
    jobs.sort(key=lambda job: job.created_at)
    with client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.zscore(k.BEAT_SCHEDULE, entry_key(job.id))
        scores = pipe.execute()
    return [
        (job, int(score) if score is not None and score >= 0 else None)
        for job, score in zip(jobs, scores, strict=True)
    ]


# -- what clawctl cron and the cron tool do ------------------------------------------------


def make_schedule(
    config: Config, *, every_sec: int | None, expr: str | None, at_time: str | None,
    tz: str | None, now: float, names: tuple[str, str, str] = ("every", "cron", "at"),
) -> Schedule:  # fmt: skip
    """The schedule from exactly one of the three ways to give it (``names``: how the caller
    spells them, for the messages)."""
    given = [name for name, value in zip(names, (every_sec, expr, at_time), strict=True)
             if value is not None]  # fmt: skip
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise JobError(f"give exactly one of {', '.join(names)} (got {what})")
    if every_sec is not None:
        if tz:
            raise JobError("a time zone means nothing for a job that runs every N seconds")
        return every(every_sec, now=now)
    zone_name = tz or config.cron.timezone
    if expr is not None:
        return cron(expr, tz=zone_name, now=now)
    assert at_time is not None
    return at(at_time, tz=zone_name, now=now)


def check_deliver(config: Config, channel: str, chat_id: str) -> Deliver:
    """A delivery target on a channel that exists and is enabled ("ws" always is)."""
    if channel not in DELIVER_CHANNELS:
        raise JobError(f"unknown channel {channel!r}; channels: {', '.join(DELIVER_CHANNELS)}")
    section = getattr(config.channels, channel, None)
    if section is not None and not getattr(section, "enabled", False):
        raise JobError(
            f"channel {channel} is not enabled; enable it first "
            f"(clawctl config set channels.{channel}.enabled true)"
        )
    if not chat_id.strip() or len(chat_id) > 256:
        raise JobError("the chat id (--to) must be 1 to 256 characters")
    return Deliver(channel=channel, chat_id=chat_id.strip())


def add_job(
    client: redis.Redis, config: Config, *, name: str, message: str, schedule: Schedule,
    deliver: Deliver | None = None, created_by: str = "cli", created_in: str = "",
) -> tuple[Job, int]:  # fmt: skip
    """Store a new job and arm its first due time; (job, first due time)."""
    name, message = " ".join(name.split()), message.strip()
    if not name or len(name) > MAX_NAME_CHARS or not re.fullmatch(r"[^\x00-\x1f\x7f]+", name):
        raise JobError(f"the name must be 1 to {MAX_NAME_CHARS} printable characters")
    if not message or len(message) > MAX_MESSAGE_CHARS:
        raise JobError(f"the message must be 1 to {MAX_MESSAGE_CHARS} characters")
    now = time.time()
    first = schedule.next_after(now)
    if first is None:
        raise JobError("the schedule has no time left in the future")
    job = Job(
        id=secrets.token_hex(4), name=name, message=message, schedule=schedule,
        deliver=deliver, created_at=now, created_by=created_by, created_in=created_in,
    )  # fmt: skip

    def decide(existing: Job | None, _armed: int | None) -> Change:
        if existing is not None:
            raise _IdTaken
        jobs = [Job.model_validate_json(raw) for raw in client.hvals(k.CRON_JOBS)]
        if len(jobs) >= config.cron.max_jobs:
            raise JobError(f"there are already {len(jobs)} jobs (cron.max_jobs); remove some "
                           "with `clawctl cron remove ID`")  # fmt: skip
        mine = sum(1 for j in jobs if j.created_by == "agent")
        if created_by == "agent" and mine >= config.cron.max_agent_jobs:
            raise JobError(f"the agent already has {mine} jobs (cron.max_agent_jobs); "
                           "remove one first")  # fmt: skip
        return Change(job=job, arm=first)

    for _ in range(5):
        try:
            change_job(client, job.id, decide)
            return job, first
        except _IdTaken:
            job = job.model_copy(update={"id": secrets.token_hex(4)})
    raise JobError("could not find a free job id")  # 2**32 ids: does not happen


class _IdTaken(Exception):
    pass


def find(client: redis.Redis, job_id: str) -> Job:
    wanted = job_id.strip().lower()
    job = load(client, wanted) if re.fullmatch(r"[0-9a-f]{1,32}", wanted) else None
    if job is None:
        raise JobError(f"no cron job with id {job_id!r}; `clawctl cron list` shows the ids")
    return job


def set_enabled(client: redis.Redis, job_id: str, enabled: bool) -> tuple[Job, int | None]:
    """Enable (re-arm from now, failures forgotten) or disable (entry removed, job kept);
    (the job as it is now, its next run)."""
    job_id = find(client, job_id).id
    now = time.time()

    def decide(job: Job | None, armed: int | None) -> Change:
        if job is None:
            raise JobError(f"cron job {job_id} was just removed")
        if not enabled:
            return Change(job=job.model_copy(update={"enabled": False, "retry_at": None}),
                          disarm=True)  # fmt: skip
        if job.enabled and armed is not None:
            return Change()  # already on and armed: nothing to do
        schedule = job.schedule
        if schedule.kind == "every":  # counts from now, not from when it was added
            schedule = schedule.model_copy(update={"anchor": int(now)})
        first = schedule.next_after(now)
        if first is None:
            raise JobError(f"cron job {job_id} ran at its one time ({schedule.describe()}); "
                           "add a new one")  # fmt: skip
        updated = job.model_copy(update={"enabled": True, "schedule": schedule,
                                         "consecutive_failures": 0, "retry_at": None})  # fmt: skip
        return Change(job=updated, arm=first)

    change = change_job(client, job_id, decide)
    assert change is not None
    job = change.job or find(client, job_id)
    return job, change.arm if change.arm is not None else next_run(client, job_id)


def remove_job(client: redis.Redis, job_id: str) -> Job:
    job = find(client, job_id)

    def decide(current: Job | None, _armed: int | None) -> Change:
        if current is None:
            raise JobError(f"cron job {job.id} was already removed")
        return Change(remove=True)

    change_job(client, job.id, decide)
    return job
