"""``clawctl cron`` and the ``cron`` tool on a real redis-server, without a fleet: what is
stored, the next run computed in the job's time zone, and a clear error for every bad
input (nothing stored then)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from beat_schedules.cron_jobs import add_job
from beat_schedules.cron_schedule import every
from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.contract import InboundMessage, Origin
from claw_worker.tools import ToolContext, default_tools
from tests.fixtures.procs import free_port


@pytest.fixture
def cli(claw_home: Any, redis_server: Any) -> Any:
    def run(*args: str, ok: bool = True) -> str:
        result = claw_home.clawctl("cron", *args)
        assert (result.returncode == 0) is ok, (result.stdout, result.stderr)
        return result.stdout if ok else result.stderr.strip()

    claw_home.write_config({"redis": {"url": redis_server.url}, "cron": {"max_jobs": 3}})
    return run


def test_add_list_and_the_next_run_in_the_jobs_time_zone(cli: Any, redis_server: Any) -> None:
    r = redis_server.client()
    out = cli("add", "-n", "morning", "-m", "check the todo list", "-c", "0 9 * * *",
              "--tz", "America/New_York")  # fmt: skip
    job_id = out.split()[2]
    now = datetime.now(ZoneInfo("America/New_York"))
    nine = now.replace(hour=9, minute=0, second=0, microsecond=0)  # the offset of that day
    if nine <= now:
        nine = (now + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    expected = int(nine.timestamp())
    assert out.startswith(f"added job {job_id} (morning): cron '0 9 * * *' America/New_York")
    assert nine.strftime("next run %Y-%m-%d 09:00:00 E") in out  # EST or EDT
    # The next run is what beat will act on: the entry's due time in RedBeat's schedule.
    key = f"{k.BEAT_KEY_PREFIX}cron:{job_id}"
    assert r.zscore(k.BEAT_SCHEDULE, key) == expected
    assert json.loads(r.hget(key, "definition"))["kwargs"] == {"due": expected}

    cli("add", "-n", "ping", "-m", "ping", "-e", "90")
    cli("add", "-n", "later", "-m", "x", "--at", "2099-06-01T09:00", "--tz", "Europe/Paris",
        "-d", "--channel", "ws", "--to", "my-chat")  # fmt: skip
    table = cli("list").splitlines()
    assert table[0].split() == ["ID", "NAME", "SCHEDULE", "NEXT", "RUN", "LAST", "RUN", "LAST",
                                "STATUS", "ENABLED"]  # fmt: skip
    later = r"at 2099-06-01 09:00:00 CEST\s+2099-06-01 09:00:00 CEST\s+-\s+-\s+yes$"
    assert re.search(later, table[3]), table[3]
    assert re.search(r"every 90s\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\s+-\s+-\s+yes$", table[2])
    listed = {job["name"]: job for job in json.loads(cli("list", "--json"))}
    assert listed["morning"]["next_run"] == expected
    assert listed["later"]["deliver"] == {"channel": "ws", "chat_id": "my-chat"}
    assert listed["later"]["next_run"] == datetime(2099, 6, 1, 7, tzinfo=UTC).timestamp()
    # cron.max_jobs (3 here).
    assert "already 3 jobs (cron.max_jobs)" in cli("add", "-n", "x", "-m", "y", "-e", "5", ok=False)

    assert cli("disable", job_id) == f"disabled job {job_id} (morning); it stays in the list\n"
    assert r.zscore(k.BEAT_SCHEDULE, key) is None and not r.exists(key)
    [line] = [line for line in cli("list").splitlines() if line.startswith(job_id)]
    assert line.endswith("  no")
    assert cli("enable", job_id).startswith(f"enabled job {job_id} (morning); next run ")
    assert r.zscore(k.BEAT_SCHEDULE, key) == expected
    assert cli("remove", job_id) == f"removed job {job_id} (morning)\n"
    assert r.hget(k.CRON_JOBS, job_id) is None and not r.exists(key)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-n", "x", "-m", "y"], "give exactly one of -e/--every, -c/--cron, --at (got none)"),
        (["-n", "x", "-m", "y", "-e", "5", "-c", "* * * * *"], "got -e/--every and -c/--cron"),
        (["-m", "y", "-e", "5"], "Missing option '-n' / '--name'"),
        (["-n", "x", "-e", "5"], "Missing option '-m' / '--message'"),
        (["-n", "x", "-m", "y", "-e", "0"], "every must be a whole number of seconds >= 1"),
        (["-n", "x", "-m", "y", "-e", "soon"], "'soon' is not a valid integer"),
        (["-n", "x", "-m", "y", "-c", "0 25 * * *"], "hour field '25': 25 is outside 0-23"),
        (["-n", "x", "-m", "y", "-c", "0 9 * *"], "has 4 fields, needs 5"),
        (["-n", "x", "-m", "y", "--at", "2001-01-01T00:00Z"], "is in the past"),
        (["-n", "x", "-m", "y", "--at", "next tuesday"], "is not an ISO-8601 time"),
        (["-n", "x", "-m", "y", "--at", "9999-12-31T23:59:59-12:00"],
         "is more than 100 years ahead"),
        (["-n", "x", "-m", "y", "--at", "2099-03-29T02:30", "--tz", "Europe/Paris"],
         "does not exist in Europe/Paris"),
        (["-n", "x", "-m", "y", "-c", "@daily", "--tz", "Moon/Base"], "unknown time zone"),
        (["-n", "x", "-m", "y", "-e", "5", "--tz", "UTC"], "means nothing for a job that runs"),
        (["-n", "x", "-m", "y", "-e", "5", "-d"], "-d/--deliver needs --channel NAME and --to ID"),
        (["-n", "x", "-m", "y", "-e", "5", "--channel", "ws", "--to", "c"],
         "--channel and --to go with -d/--deliver"),
        (["-n", "x", "-m", "y", "-e", "5", "-d", "--channel", "pigeon", "--to", "c"],
         "unknown channel 'pigeon'; channels: ws, telegram"),
        (["-n", "x", "-m", "y", "-e", "5", "-d", "--channel", "telegram", "--to", "c"],
         "channel telegram is not enabled"),
        (["-n", " ", "-m", "y", "-e", "5"], "the name must be 1 to 64 printable characters"),
        (["-n", "x", "-m", "  ", "-e", "5"], "the message must be 1 to 8000 characters"),
    ],
)  # fmt: skip
def test_bad_add_commands_are_refused_clearly(
    cli: Any, redis_server: Any, args: list[str], says: str
) -> None:
    assert says in cli("add", *args, ok=False)
    assert redis_server.client().hlen(k.CRON_JOBS) == 0  # nothing half-written


def test_unknown_ids_and_an_unreachable_redis(cli: Any, claw_home: Any) -> None:
    for verb in ("enable", "disable", "remove"):
        said = cli(verb, "abcd1234", ok=False)
        assert said == ("Error: no cron job with id 'abcd1234'; `clawctl cron list` shows the ids")
    assert "no cron job with id '*'" in cli("remove", "*", ok=False)
    claw_home.write_config({"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    said = cli("list", ok=False)
    assert said.startswith("Error: Redis error:") and "Connection refused" in said
    assert len(said.splitlines()) == 2  # the error and what to check


def test_the_cron_tool_and_its_guards(redis_server: Any, workspace: Path) -> None:
    config = Config.model_validate({"cron": {"max_agent_jobs": 2}})
    r = redis_server.client()
    tools = default_tools(config)

    def run(args: dict[str, Any], *, origin: str = "user", session: str = "ws:me") -> str:
        return tools.run("cron", args, ToolContext(workspace, session, config, redis=r,
                                                   origin=origin))  # fmt: skip

    add = {"action": "add", "name": "water", "message": "Remind: water the plants",
           "every_sec": 3600}  # fmt: skip
    said = run(add)
    assert said.startswith("Added job ") and "every 1h" in said
    assert "replies are not delivered to any chat" in said  # no message of a chat here
    [job_id] = r.hkeys(k.CRON_JOBS)
    assert json.loads(r.hget(k.CRON_JOBS, job_id))["created_by"] == "agent"
    listed = run({"action": "list"})
    assert f"- {job_id} 'water': every 1h; next " in listed and "made by agent" in listed
    # A run that a cron job started cannot add jobs, nor remove another job.
    assert run(add, origin="cron", session=f"cron:{job_id}") == (
        "Error: a run started by a cron job cannot create jobs"
    )
    assert run({"action": "remove", "job_id": job_id}, origin="cron", session="cron:0000") == (
        "Error: a run started by a cron job may remove only its own job"
    )
    # Bad arguments come back as errors the model can read; nothing is stored.
    for args, says in [
        ({"action": "add", "name": "x"}, "add needs name and message"),
        ({**add, "cron": "0 9 * * *"}, "give exactly one of every_sec, cron, at/in_sec"),
        ({**add, "every_sec": None, "cron": "99 * * * *"}, "minute field '99'"),
        ({**add, "every_sec": None, "at": "2001-01-01T00:00Z"}, "is in the past"),
        ({**add, "channel": "ws"}, "channel and chat_id go together"),
        ({**add, "channel": "pigeon", "chat_id": "1"}, "unknown channel 'pigeon'"),
        ({"action": "remove"}, "remove needs job_id"),
        ({"action": "remove", "job_id": "ffffffff"}, "no cron job with id 'ffffffff'"),
        ({"action": "explode"}, "action: Input should be 'add', 'list' or 'remove'"),
        ({**add, "every_sec": None, "at": "2099-01-01T00:00Z", "in_sec": 60}, "not both"),
        ({**add, "in_sec": 60}, "give exactly one of every_sec, cron, at/in_sec"),
    ]:
        result = run(args)
        assert result.startswith("Error:") and says in result, (args, result)
    assert r.hlen(k.CRON_JOBS) == 1
    # At most cron.max_agent_jobs (2 here) made by the agent.
    soon = run({**add, "every_sec": None, "in_sec": 600, "channel": "ws", "chat_id": "c1"})
    assert soon.endswith("replies go to ws:c1.") and "first run " in soon
    assert "the agent already has 2 jobs (cron.max_agent_jobs)" in run(add)
    # The agent removes its own jobs (a cron run: only the job that started it), not the
    # operator's.
    operator, _ = add_job(r, config, name="ops", message="m", schedule=every(60, now=time.time()))
    assert "was made by the operator" in run({"action": "remove", "job_id": operator.id})
    assert run({"action": "remove", "job_id": job_id}) == f"Removed job {job_id} (water)."
    [other] = [j for j in r.hkeys(k.CRON_JOBS) if j != operator.id]
    own = run({"action": "remove", "job_id": other}, origin="cron", session=f"cron:{other}")
    assert own == f"Removed job {other} (water)."
    assert r.hkeys(k.CRON_JOBS) == [operator.id]


def test_work_a_cron_run_starts_cannot_add_jobs_either(redis_server: Any, workspace: Path) -> None:
    """The guard holds down the chain: a cron run's sub-agent, a task of a pipeline it made,
    and its own answer to a sub-agent's report (origin spawn, in the job's session)."""
    config = Config.model_validate({"work": {"max_depth": 3}})
    r, tools = redis_server.client(), default_tools(config)

    def run(name: str, args: dict[str, Any], session: str, origin: str) -> str:
        return tools.run(name, args, ToolContext(workspace, session, config, redis=r,
                                                 origin=origin))  # fmt: skip

    job, _ = add_job(r, config, name="ops", message="m", schedule=every(60, now=time.time()))
    mine = f"cron:{job.id}"
    add = {"action": "add", "name": "more", "message": "more of me", "every_sec": 60}
    refused = "Error: a run started by a cron job cannot create jobs"
    started = run("spawn", {"task": "look around"}, mine, "cron")
    child = started.split()[2].rstrip(".")
    assert started.startswith("Started sub-agent spawn:") and child.startswith("spawn:")
    grandchild = run("spawn", {"task": "deeper"}, child, "spawn").split()[2].rstrip(".")
    made = run("pipeline_create", {"goal": "g", "tasks": [{"id": "a", "role": "r",
                                                           "goal": "g"}]}, mine, "cron")  # fmt: skip
    task_session = f"pipeline:{made.split()[2]}:a"
    for session, origin in [(child, "spawn"), (grandchild, "spawn"), (mine, "spawn"),
                            (task_session, "pipeline")]:  # fmt: skip
        assert run("cron", add, session, origin) == refused, (session, origin)
    assert r.hkeys(k.CRON_JOBS) == [job.id]
    # A late run of a task whose pipeline expired cannot be traced back: refused as well.
    r.delete(k.pipeline_key(made.split()[2]))
    assert run("cron", add, task_session, "pipeline") == refused
    # A sub-agent of a person's chat still schedules.
    helper = run("spawn", {"task": "remind"}, "ws:me", "user").split()[2].rstrip(".")
    assert run("cron", add, helper, "spawn").startswith("Added job ")
    [other] = [j for j in r.hkeys(k.CRON_JOBS) if j != job.id]
    removed = run("cron", {"action": "remove", "job_id": other}, child, "spawn")
    assert removed == "Error: a run started by a cron job may remove only its own job"


def test_an_autonomous_round_hands_its_start_down(redis_server: Any, workspace: Path) -> None:
    """A round runs in the user's own session, so the chain up from its sub-agents and its
    pipeline's tasks ends at the user's: their messages carry who started them instead, and
    their runs are refused jobs as the round is."""
    config = Config()
    r, tools = redis_server.client(), default_tools(config)
    add = {"action": "add", "name": "more", "message": "more", "every_sec": 60}
    refused = "Error: a run started by autonomous mode cannot create jobs"
    round_ = ToolContext(workspace, "ws:me", config, redis=r, origin="autonomy",
                         started_by="autonomy")  # fmt: skip
    assert tools.run("cron", add, round_) == refused
    child = tools.run("spawn", {"task": "look around"}, round_).split()[2].rstrip(".")
    made = tools.run("pipeline_create", {"goal": "g", "tasks": [{"id": "a", "role": "r",
                                                                 "goal": "g"}]}, round_)  # fmt: skip
    pipeline_id = made.split()[2]
    tools.run("pipeline_dispatch", {"pipeline_id": pipeline_id}, round_)
    for session in (child, f"pipeline:{pipeline_id}:a"):
        [raw] = r.lrange(k.mailbox_key(session), 0, -1)
        message = InboundMessage.model_validate_json(raw)
        assert message.started_by is Origin.AUTONOMY, session
        ctx = ToolContext(workspace, session, config, redis=r, origin=message.origin.value,
                          started_by=message.started_by.value)  # fmt: skip
        assert tools.run("cron", add, ctx) == refused
    assert r.hlen(k.CRON_JOBS) == 0
