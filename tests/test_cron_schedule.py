"""When cron jobs are due (beat_schedules/cron_schedule.py): every N s, cron expressions in
time zones across daylight saving, one-shot --at times, and the errors for bad ones."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from beat_schedules.cron_schedule import ScheduleError, at, cron, every, parse_cron

PARIS, NEW_YORK = "Europe/Paris", "America/New_York"


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def local(epoch: float, tz: str) -> str:
    return datetime.fromtimestamp(epoch, ZoneInfo(tz)).isoformat()


def fires(schedule, after: float, n: int, tz: str) -> list[str]:
    out = []
    for _ in range(n):
        after = schedule.next_after(after)
        out.append(local(after, tz))
    return out


def test_every_counts_from_its_anchor() -> None:
    job = every(2, now=1000.7)
    assert job.anchor == 1000
    assert [job.next_after(t) for t in (1000.7, 1001.9, 1002, 1002.5, 5000)] == [
        1002, 1002, 1004, 1004, 5002,
    ]  # fmt: skip
    for bad in (0, -5, True, 400 * 86400):
        with pytest.raises(ScheduleError):
            every(bad, now=0)


def test_cron_in_a_time_zone_keeps_the_wall_clock_across_dst() -> None:
    daily = cron("0 9 * * *", tz=PARIS, now=utc(2025, 3, 1))
    # 09:00 Paris is 08:00 UTC in winter and 07:00 UTC in summer: still 09:00 local.
    assert fires(daily, utc(2025, 3, 29, 12), 3, PARIS) == [
        "2025-03-30T09:00:00+02:00", "2025-03-31T09:00:00+02:00", "2025-04-01T09:00:00+02:00",
    ]  # fmt: skip
    weekdays = cron("30 8 * * mon-fri", tz=NEW_YORK, now=utc(2025, 1, 1))
    assert fires(weekdays, utc(2025, 11, 1), 3, NEW_YORK) == [  # Sat Nov 1; DST ends Nov 2
        "2025-11-03T08:30:00-05:00", "2025-11-04T08:30:00-05:00", "2025-11-05T08:30:00-05:00",
    ]  # fmt: skip
    # The same expression in UTC fires at other instants.
    assert cron("0 9 * * *", tz="UTC", now=0).next_after(utc(2025, 6, 1)) == utc(2025, 6, 1, 9)


def test_skipped_and_repeated_wall_times() -> None:
    # Spring forward (Paris, 2025-03-30 02:00 -> 03:00): 02:30 fires once at 03:00.
    nightly = cron("30 2 * * *", tz=PARIS, now=0)
    assert fires(nightly, utc(2025, 3, 29, 12), 2, PARIS) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00",
    ]  # fmt: skip
    quarter = cron("*/15 * * * *", tz=PARIS, now=0)  # the skipped hour's four become one
    assert fires(quarter, utc(2025, 3, 30, 0, 40), 3, PARIS) == [
        "2025-03-30T01:45:00+01:00", "2025-03-30T03:00:00+02:00", "2025-03-30T03:15:00+02:00",
    ]  # fmt: skip
    # Fall back (2025-10-26 03:00 -> 02:00): a fixed 02:30 fires once, at its first pass...
    assert fires(nightly, utc(2025, 10, 25, 12), 2, PARIS) == [
        "2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00",
    ]  # fmt: skip
    # ... an every-hour job fires in both passes, keeping its pace in real time.
    half = cron("*/30 * * * *", tz=PARIS, now=0)
    got = []
    after = utc(2025, 10, 25, 23, 50)
    for _ in range(5):
        after = half.next_after(after)
        got.append(datetime.fromtimestamp(after, UTC).strftime("%H:%M"))
    assert got == ["00:00", "00:30", "01:00", "01:30", "02:00"]


def test_day_of_month_or_day_of_week() -> None:
    # Both restricted: either matches (cron's rule). The 13th or any Friday, June 2025.
    either = cron("0 0 13 * 5", tz="UTC", now=0)
    assert fires(either, utc(2025, 6, 5), 4, "UTC") == [
        "2025-06-06T00:00:00+00:00", "2025-06-13T00:00:00+00:00",
        "2025-06-20T00:00:00+00:00", "2025-06-27T00:00:00+00:00",
    ]  # fmt: skip
    # One of them "*"-led: both must match (only Fridays that are the 13th).
    both = cron("0 0 */1 * 5", tz="UTC", now=0)
    assert both.next_after(utc(2025, 6, 7)) == utc(2025, 6, 13)
    leap = cron("0 12 29 2 *", tz="UTC", now=utc(2025, 1, 1))
    assert leap.next_after(utc(2025, 1, 1)) == utc(2028, 2, 29, 12)
    assert parse_cron("@weekly") == parse_cron("0 0 * * 7")
    assert parse_cron("0 0 * * sun-tue").weekdays == {0, 1, 2}


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("* * * *", "has 4 fields, needs 5"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("* 24 * * *", "hour field '24'"),
        ("0 0 0 * *", "day of month field '0'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 0 * * 8", "day of week field '8'"),
        ("x * * * *", "'x' is not a number"),
        ("10-5 * * * *", "runs backwards"),
        ("*/0 * * * *", "step '0'"),
        ("1,,2 * * * *", "empty list item"),
        ("0 0 30 2 *", "never matches a real date"),
    ],
)
def test_bad_cron_expressions_are_explained(expr: str, says: str) -> None:
    with pytest.raises(ScheduleError, match=says.replace("*", r"\*")):
        cron(expr, tz="UTC", now=utc(2025, 1, 1))


def test_at_times_in_zones_and_their_errors() -> None:
    now = utc(2025, 3, 1)
    assert at("2025-06-01T09:00", tz=PARIS, now=now).at == utc(2025, 6, 1, 7)
    assert at("2025-06-01T09:00", tz=NEW_YORK, now=now).at == utc(2025, 6, 1, 13)
    # An explicit offset wins over the zone (which then only shows the time).
    assert at("2025-06-01T09:00:00+00:00", tz=PARIS, now=now).at == utc(2025, 6, 1, 9)
    assert at("2025-06-01T09:00Z", tz="UTC", now=now).next_after(now) == utc(2025, 6, 1, 9)
    one = at("2025-06-01T09:00Z", tz="UTC", now=now)
    assert one.next_after(utc(2025, 6, 1, 9)) is None  # it has run: never again
    # A repeated wall time is its first occurrence.
    assert at("2025-10-26T02:30", tz=PARIS, now=now).at == utc(2025, 10, 26, 0, 30)
    with pytest.raises(ScheduleError, match="does not exist in Europe/Paris"):
        at("2025-03-30T02:30", tz=PARIS, now=now)
    with pytest.raises(ScheduleError, match="is in the past"):
        at("2025-02-01T00:00", tz="UTC", now=now)
    with pytest.raises(ScheduleError, match="not an ISO-8601 time"):
        at("tomorrow at nine", tz="UTC", now=now)
    for bad_zone in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(ScheduleError, match="unknown time zone"):
            at("2025-06-01T09:00", tz=bad_zone, now=now)


def test_describe() -> None:
    assert every(3600, now=0).describe() == "every 1h"
    assert every(90, now=0).describe() == "every 90s"
    assert cron("0 9 * * *", tz=PARIS, now=0).describe() == "cron '0 9 * * *' Europe/Paris"
    assert at("2030-01-01T09:00", tz=PARIS, now=0).describe() == "at 2030-01-01 09:00:00 CET"
