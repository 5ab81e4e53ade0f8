"""Durations outside the time-driven sections (test_config.py has those) are bounded: a value
past its bound is refused by `clawctl config check` and `config set`, naming the field,
instead of failing at run time (Redis "invalid expire time" at every enqueue or lease, an
OverflowError at every LLM call or web request, or when pruning logs); and the bound itself
is usable where the value ends up (Redis takes the TTL, a socket takes the timeout)."""

from __future__ import annotations

import socket
import time
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from beat_schedules.cron_schedule import format_time
from claw_worker.config import Config
from claw_worker.config.fields import MAX_PERIOD_SEC
from claw_worker.logs import remove_expired
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.fleet import with_overrides
from tests.fixtures.redis_server import RedisServer

# (the field, its bound, where the value ends up)
DURATIONS = [
    ("worker.message_ttl_sec", MAX_PERIOD_SEC, "expire"),  # inbound/outbound/spawn keys
    ("work.pipeline_ttl_sec", MAX_PERIOD_SEC, "expire"),  # a pipeline's key
    ("worker.lease_sec", 86400, "pexpire"),  # session leases and resource locks
    ("cron.retry_backoff_base_sec", MAX_PERIOD_SEC, "due"),  # a failed job's retry time
    ("cron.retry_backoff_max_sec", MAX_PERIOD_SEC, "due"),
    ("logging.retention_days", 3660, "days"),  # the cutoff of log retention
    ("providers.proxy.timeout_sec", 3600, "timeout"),  # an LLM request (MAX_REQUEST_SEC)
    ("tools.web_search.timeout_sec", 600, "timeout"),
    ("tools.web_fetch.timeout_sec", 600, "timeout"),
]
IDS = [dotted for dotted, _, _ in DURATIONS]


def nested(values: dict[str, int]) -> dict[str, Any]:
    """``{"a.b": 1}`` as the config file holds it: ``{"a": {"b": 1}}``."""
    return with_overrides({}, values, sep=".")


@pytest.mark.parametrize(("dotted", "bound", "use"), DURATIONS, ids=IDS)
def test_a_duration_past_its_bound_is_refused_naming_the_field(
    claw_home: ClawHome, dotted: str, bound: int, use: str
) -> None:
    claw_home.write_config(nested({dotted: 10**16}))  # a typo of the kind that overflows
    result = claw_home.clawctl("config", "check")
    assert result.returncode == 1, result.stdout
    assert dotted in result.stderr and f"less than or equal to {bound}" in result.stderr

    claw_home.write_config({})
    before = claw_home.config_file.read_bytes()
    result = claw_home.clawctl("config", "set", dotted, str(bound + 1))
    assert result.returncode != 0 and dotted in result.stderr, result.stdout + result.stderr
    assert claw_home.config_file.read_bytes() == before


@pytest.mark.parametrize(("dotted", "bound", "use"), DURATIONS, ids=IDS)
def test_a_duration_at_its_bound_is_usable(
    redis_server: RedisServer, tmp_path: Path, dotted: str, bound: int, use: str
) -> None:
    # Every field at its bound at once: they are valid together (cron's base and max too).
    config = Config.model_validate(nested({field: most for field, most, _ in DURATIONS}))
    value = reduce(getattr, dotted.split("."), config)
    assert value == bound
    r = redis_server.client()
    if use == "expire":
        assert r.set("claw:test:ttl", "x", ex=value)
        assert r.ttl("claw:test:ttl") > value - 60
    elif use == "pexpire":
        assert r.set("claw:test:lease", "x", px=value * 1000)
        assert r.pttl("claw:test:lease") > (value - 60) * 1000
    elif use == "due":
        due = time.time() + value
        assert format_time(due).startswith(time.strftime("%Y", time.gmtime(due)))
        r.zadd("claw:test:due", {"job": due})
        assert r.zscore("claw:test:due", "job") == pytest.approx(due)
    elif use == "days":
        (tmp_path / "logs").mkdir()
        assert remove_expired(tmp_path / "logs", "worker", value) == []
    else:  # a request's timeout, as httpx sets it on its socket
        with socket.create_connection(("127.0.0.1", redis_server.port), timeout=value) as conn:
            conn.settimeout(value)
            conn.sendall(b"PING\r\n")
            assert conn.recv(64) == b"+PONG\r\n"
