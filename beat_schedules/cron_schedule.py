"""When a cron job is due: its schedule (every N s, a cron expression in a time zone, or one
time) and the next due time after a given instant. Pure: no Redis, no Celery.

Times are epoch seconds (whole seconds). A cron expression is evaluated in the job's time
zone on the wall clock, as cron does, with these rules where the clock jumps (DST):

- a wall time that does not exist (the clocks skip forward over it) fires once, at the
  first instant after the jump (02:30 on a spring-forward night in Europe/Paris fires at
  03:00); several skipped wall times give that one fire;
- a wall time that happens twice (the clocks fall back) fires once, at its first
  occurrence, unless the hour field is ``*``: an hourly (or finer) job keeps its pace and
  fires in both passes of the repeated hour.

Day-of-month and day-of-week follow cron's rule: when both are restricted (neither starts
with ``*``), a day matches if either matches; otherwise both must.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

HORIZON_DAYS = 9 * 366  # far enough for Feb 29 across a non-leap 2100
MAX_EVERY_SEC = 366 * 86400
MAX_AT_YEARS = 100  # an --at further ahead is a typo (and past 9999 cannot be shown)
MAX_SHIFT = timedelta(hours=3)  # more than any UTC offset change

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}  # fmt: skip
MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
# (name, lowest, highest, names); day of week accepts 7 for Sunday too.
FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says why, for a person to read."""


def zone(name: str) -> tzinfo:
    """The time zone named ``name`` (IANA, e.g. Europe/Paris), or a clear ScheduleError."""
    if name.upper() == "UTC":
        return UTC  # needs no tz database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris, "
            "America/New_York or UTC"
        ) from None


@dataclass(frozen=True)
class CronExpr:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_star: bool  # the day-of-month field starts with "*"
    dow_star: bool

    @property
    def every_hour(self) -> bool:
        return len(self.hours) == 24

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow


def parse_cron(text: str) -> CronExpr:
    """A 5-field cron expression (minute hour day-of-month month day-of-week; lists, ranges,
    steps, month and weekday names) or a macro such as @daily."""
    expr = MACROS.get(text.strip().lower(), text)
    parts = expr.split()
    if len(parts) != 5:
        raise ScheduleError(
            f"cron expression {text!r} has {len(parts)} fields, needs 5: minute hour "
            "day-of-month month day-of-week (e.g. '0 9 * * 1-5'), or @hourly/@daily/"
            "@weekly/@monthly/@yearly"
        )
    sets = [_field(part, *spec, text) for part, spec in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return CronExpr(
        tuple(sorted(sets[0])), tuple(sorted(sets[1])), frozenset(sets[2]),
        frozenset(sets[3]), weekdays, parts[2].startswith("*"), parts[4].startswith("*"),
    )  # fmt: skip


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int], expr: str) -> set[int]:
    def bad(why: str) -> ScheduleError:
        return ScheduleError(f"cron expression {expr!r}: {name} field {text!r}: {why}")

    def value(token: str) -> int:
        found = names.get(token.lower()) if names else None
        if found is None:
            if not re.fullmatch(r"\d{1,2}", token):
                alt = f" or a name ({', '.join(names)})" if names else ""
                raise bad(f"{token!r} is not a number{alt}")
            found = int(token)
        if not lo <= found <= hi:
            raise bad(f"{found} is outside {lo}-{hi}")
        return found

    values: set[int] = set()
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not re.fullmatch(r"\d{1,3}", step_text) or int(step_text) == 0:
                raise bad(f"step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if span == "*":
            start, end = lo, hi
        elif "-" in span:
            first, _, last = span.partition("-")
            start, end = value(first), value(last)
            if start > end:
                raise bad(f"range {span!r} runs backwards")
        elif span:
            start = value(span)
            end = hi if slash else start  # "5/15": from 5 to the end, every 15
        else:
            raise bad("an empty list item")
        values.update(range(start, end + 1, step))
    return values


class Schedule(BaseModel):
    """How a job repeats, as stored with it. Make one with ``every``, ``cron`` or ``at``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["every", "cron", "at"]
    tz: str = "UTC"
    every_sec: int | None = None
    anchor: int | None = None  # every: due at anchor + k * every_sec, k >= 1
    expr: str | None = None
    at: int | None = None

    def next_after(self, after: float) -> int | None:
        """The first due time strictly after ``after`` (epoch seconds); None: never again."""
        if self.kind == "every":
            assert self.every_sec and self.anchor is not None
            steps = max(0, math.floor((after - self.anchor) / self.every_sec)) + 1
            return self.anchor + steps * self.every_sec
        if self.kind == "at":
            assert self.at is not None
            return self.at if self.at > after else None
        assert self.expr is not None
        return _cron_next(parse_cron(self.expr), zone(self.tz), after)

    def describe(self) -> str:
        if self.kind == "every":
            return f"every {_duration(self.every_sec or 0)}"
        if self.kind == "at":
            return f"at {format_time(self.at or 0, self.tz)}"
        return f"cron '{self.expr}' {self.tz}"


def every(seconds: int, *, now: float) -> Schedule:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise ScheduleError(f"every must be a whole number of seconds >= 1, not {seconds!r}")
    if seconds > MAX_EVERY_SEC:
        raise ScheduleError(f"every {seconds} s is more than a year; use a cron expression")
    return Schedule(kind="every", every_sec=seconds, anchor=int(now))


def cron(expr: str, *, tz: str, now: float) -> Schedule:
    zone(tz)
    schedule = Schedule(kind="cron", expr=" ".join(expr.split()), tz=tz)
    if schedule.next_after(now) is None:
        raise ScheduleError(f"cron expression {expr!r} never matches a real date")
    return schedule


def at(text: str, *, tz: str, now: float) -> Schedule:
    """One time, ISO-8601 (``2025-06-01T09:00``, with or without an offset; without one it
    is a wall time in ``tz``). It must be in the future, at most ``MAX_AT_YEARS`` ahead, and,
    as a wall time, exist."""
    where = zone(tz)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            f"{text!r} is not an ISO-8601 time such as 2025-06-01T09:00 or "
            "2025-06-01T09:00:00+02:00"
        ) from None
    if when.tzinfo is None:
        first, second = when.replace(tzinfo=where), when.replace(tzinfo=where, fold=1)
        if first.timestamp() > second.timestamp():
            raise ScheduleError(
                f"{text} does not exist in {tz}: the clocks skip that time (daylight saving); "
                "pick another time or give an explicit UTC offset"
            )
        when = first  # a time that happens twice: its first occurrence
    instant = math.ceil(when.timestamp())
    if instant <= now:
        raise ScheduleError(
            f"{text} is in the past (now it is {format_time(now, tz)}); give a future time"
        )
    if instant > now + MAX_AT_YEARS * 366 * 86400:
        raise ScheduleError(f"{text} is more than {MAX_AT_YEARS} years ahead; give a nearer time")
    return Schedule(kind="at", at=instant, tz=tz)


def format_time(epoch: float, tz: str = "UTC") -> str:
    """``2025-06-01 09:00:00 CEST`` in ``tz``."""
    local = datetime.fromtimestamp(epoch, zone(tz))
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or tz)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cron_next(expr: CronExpr, where: tzinfo, after: float) -> int | None:
    """The first instant > ``after`` at which ``expr`` fires in ``where`` (see the module's
    rules); days are walked on the local calendar, wall times mapped to instants."""
    floor = datetime.fromtimestamp(after, where).replace(tzinfo=None) - MAX_SHIFT
    day = floor.date()
    best: int | None = None
    for _ in range(HORIZON_DAYS):
        if expr.matches_day(day):
            for hour in expr.hours:
                if datetime(day.year, day.month, day.day, hour, 59) < floor:
                    continue
                for minute in expr.minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    instants = _instants(wall, where, repeat=expr.every_hour)
                    if best is not None and instants[0] >= best:
                        return best  # later wall times are later instants
                    for instant in instants:
                        if instant > after and (best is None or instant < best):
                            best = instant
        day += timedelta(days=1)
        midnight = datetime(day.year, day.month, day.day)
        if best is not None and _instants(midnight, where, repeat=False)[0] >= best:
            return best
    return best


def _instants(wall: datetime, where: tzinfo, *, repeat: bool) -> tuple[int, ...]:
    """The instants of a wall time: one; two where the clocks fall back (the second only
    with ``repeat``); the end of the jump where they skip it."""
    first = int(wall.replace(tzinfo=where).timestamp())
    second = int(wall.replace(tzinfo=where, fold=1).timestamp())
    if first == second:
        return (first,)
    if first < second:
        return (first, second) if repeat else (first,)
    # Skipped: zoneinfo maps it across the jump both ways; the jump is between the two.
    after_offset = wall.replace(tzinfo=where, fold=1).utcoffset()
    lo, hi = second, first
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, where).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return (hi,)
