"""Cron jobs end to end: ``clawctl cron`` on a running fleet (real worker, beat on RedBeat,
redis-server, scripted LLM), delivery to a WebSocket chat, the agent's ``cron`` tool and
its guard, and failures that back off until the job is disabled with an alert."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from websockets.asyncio.client import ClientConnection, connect

from claw_worker import constants as k
from tests.fixtures.procs import wait_for
from tests.llm_server import error, last_user_text, text, tool_call


def beat_active(fleet: Any, name: str = "beat") -> bool:
    return "beat: Acquired lock" in fleet.output(name)


def start_fleet(fleet: Any, *, ingress: bool = False) -> None:
    if ingress:
        fleet.start_ingress()
    fleet.start_worker()
    fleet.start_beat()
    wait_for(lambda: beat_active(fleet), timeout=30, what="beat to take RedBeat's lock")


def added_id(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    found = re.search(r"^added job ([0-9a-f]{8}) ", result.stdout)
    assert found, result.stdout
    return found.group(1)


def fires(r: Any, job_id: str) -> list[tuple[int, float]]:
    """(due time, when stored) of each fire of the job that reached its mailbox."""
    found = []
    for key in r.scan_iter(match=k.message_key(f"cron:{job_id}", "*")):
        due = int(key.rsplit("-", 1)[1])
        found.append((due, float(r.hget(key, "queued_at"))))
    return sorted(found)


def llm_dues(llm_server: Any, marker: str) -> list[str]:
    """The due time in the header of each request the job's runs made to the LLM."""
    heads = [last_user_text(body).split("\n", 1)[0] for body in llm_server.requests_for(marker)]
    return [re.search(r"due (.+)\]$", head).group(1) for head in heads]  # type: ignore[union-attr]


def job(r: Any, job_id: str) -> dict[str, Any]:
    return json.loads(r.hget(k.CRON_JOBS, job_id))


def row(claw_home: Any, job_id: str) -> str:
    listing = claw_home.clawctl("cron", "list")
    assert listing.returncode == 0, listing.stderr
    [line] = [line for line in listing.stdout.splitlines() if line.startswith(job_id)]
    return line


def quiet_for(seconds: float, count: Any) -> None:
    """Nothing new for ``seconds`` (a bounded watch: asserting that nothing happens)."""
    before = count()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert count() == before, "the job fired while it should not"
        time.sleep(0.1)


def test_a_job_added_with_clawctl_fires_on_time_until_disabled_and_removed(
    fleet_factory: Any, claw_home: Any, redis_server: Any, llm_server: Any
) -> None:
    fleet = fleet_factory()
    start_fleet(fleet)
    r = redis_server.client()

    job_id = added_id(claw_home.clawctl("cron", "add", "-n", "tick", "-m", "CRON-TICK go",
                                        "-e", "2"))  # fmt: skip
    anchor = job(r, job_id)["schedule"]["anchor"]
    wait_for(lambda: len(llm_server.requests_for("CRON-TICK")) >= 3, timeout=30,
             what="three fires of the job to reach the LLM")  # fmt: skip
    seen = fires(r, job_id)
    for due, stored in seen:
        assert (due - anchor) % 2 == 0 and due > anchor  # its own slots, every 2 s
        assert 0 <= stored - due < 2.0, (due, stored)  # within 2 s of the due time
    dues = [due for due, _ in seen]
    assert dues == list(range(dues[0], dues[-1] + 1, 2))  # none skipped, none twice
    assert len(set(llm_dues(llm_server, "CRON-TICK"))) == len(llm_dues(llm_server, "CRON-TICK"))
    wait_for(lambda: job(r, job_id)["last_status"] == "done", what="a run recorded as done")
    line = row(claw_home, job_id)
    assert "tick" in line and "every 2s" in line and line.endswith("yes")
    assert "done" in line or "fired" in line
    listed = json.loads(claw_home.clawctl("cron", "list", "--json").stdout)
    [entry] = [j for j in listed if j["id"] == job_id]
    assert entry["next_run"] > time.time() - 1 and (entry["next_run"] - anchor) % 2 == 0

    # Disabled: no more fires; the job stays, with no next run.
    result = claw_home.clawctl("cron", "disable", job_id)
    assert result.returncode == 0 and result.stdout.startswith(f"disabled job {job_id}")
    wait_for(lambda: job(r, job_id)["last_status"] != "fired", what="the last run to finish")
    quiet_for(5.0, lambda: len(fires(r, job_id)))
    line = row(claw_home, job_id)
    assert line.endswith("no") and re.search(r"every 2s\s+-\s", line), line
    # Enabled again: it fires again, counting from now.
    count = len(fires(r, job_id))
    assert claw_home.clawctl("cron", "enable", job_id).stdout.startswith(f"enabled job {job_id}")
    wait_for(lambda: len(fires(r, job_id)) > count, timeout=15, what="a fire after enable")
    # Removed: gone from the list and from beat's schedule, and it fires no more.
    result = claw_home.clawctl("cron", "remove", job_id)
    assert result.stdout == f"removed job {job_id} (tick)\n"
    assert not r.exists(f"{k.BEAT_KEY_PREFIX}cron:{job_id}")
    assert r.zscore(k.BEAT_SCHEDULE, f"{k.BEAT_KEY_PREFIX}cron:{job_id}") is None
    quiet_for(4.0, lambda: len(llm_server.requests_for("CRON-TICK")))
    assert "no cron jobs" in claw_home.clawctl("cron", "list").stdout
    assert "could not re-arm" not in fleet.output("beat")  # beat re-armed every fire itself
    for verb in ("enable", "disable", "remove"):
        gone = claw_home.clawctl("cron", verb, job_id)
        assert gone.returncode == 1 and f"no cron job with id '{job_id}'" in gone.stderr


async def recv_reply(ws: ClientConnection, says: str, timeout: float = 30.0) -> dict[str, Any]:
    """The first reply frame whose text contains ``says`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame.get("type") == "reply" and says in frame.get("text", ""):
            return frame


def local_iso(epoch: float, tz: str) -> str:
    return datetime.fromtimestamp(epoch, ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M:%S")


def test_the_agent_sets_a_reminder_delivered_to_its_chat_and_a_cron_run_cannot_add_jobs(
    fleet_factory: Any, claw_home: Any, redis_server: Any, llm_server: Any
) -> None:
    fleet = fleet_factory()
    start_fleet(fleet, ingress=True)
    r = redis_server.client()
    due = int(time.time()) + 6
    # A wall time in Paris, no offset: the tool reads it in tz.
    llm_server.reply_tool_call("cron", {"action": "add", "name": "bank", "tz": "Europe/Paris",
                                        "message": "REMINDER-BODY: call the bank",
                                        "at": local_iso(due, "Europe/Paris")},
                               when="SCHEDULE-IT")  # fmt: skip
    llm_server.reply("I will remind you.", when="SCHEDULE-IT")
    # When it runs, the agent tries to schedule more of itself: refused.
    llm_server.reply_tool_call("cron", {"action": "add", "name": "again", "every_sec": 5,
                                        "message": "REMINDER-BODY again"},
                               when="REMINDER-BODY")  # fmt: skip
    llm_server.reply("Time to call the bank!", when="REMINDER-BODY")

    async def chat() -> dict[str, Any]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await ws.send(json.dumps({"type": "message", "text": "SCHEDULE-IT at that time",
                                      "session": "my-chat"}))  # fmt: skip
            await recv_reply(ws, "I will remind you.")
            return await recv_reply(ws, "Time to call the bank!")

    reminder = asyncio.run(chat())
    assert reminder["session"] == "my-chat"
    [job_id] = r.hkeys(k.CRON_JOBS)
    made = job(r, job_id)
    assert made["created_by"] == "agent" and made["deliver"] == {"channel": "ws",
                                                                 "chat_id": "my-chat"}  # fmt: skip
    assert made["schedule"]["at"] == due and made["schedule"]["tz"] == "Europe/Paris"
    [(fired_due, stored)] = fires(r, job_id)
    assert fired_due == due and 0 <= stored - due < 2.0  # at its time, in Paris
    # The run the job started tried to add a job: the tool said no, and nothing was added.
    refused = llm_server.requests_for("REMINDER-BODY")[1]["messages"][-1]
    assert refused["role"] == "tool"
    assert "a run started by a cron job cannot create jobs" in refused["content"]
    assert r.hlen(k.CRON_JOBS) == 1
    wait_for(lambda: job(r, job_id)["last_status"] == "done", what="the run recorded")
    line = row(claw_home, job_id)
    assert re.search(r"at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T\s+-\s", line), line  # no next run


def test_failures_back_off_then_disable_the_job_with_an_alert(
    fleet_factory: Any, claw_home: Any, redis_server: Any, llm_server: Any
) -> None:
    llm_server.add_rule("FLAKY-JOB", error(400, {"error": {"message": "scripted refusal",
                                                           "type": "invalid_request_error"}}))  # fmt: skip
    fleet = fleet_factory(cron__retry_backoff_base_sec=1, cron__retry_backoff_max_sec=2,
                          cron__max_consecutive_failure_retries=2)  # fmt: skip
    start_fleet(fleet, ingress=True)
    r = redis_server.client()

    async def watch_alerts() -> tuple[str, dict[str, Any]]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await ws.send(json.dumps({"type": "message", "text": "hello", "session": "ops"}))
            await recv_reply(ws, "echo: hello")
            # Far enough ahead for clawctl to start on a loaded machine (it refuses a past time).
            at = datetime.fromtimestamp(time.time() + 10, UTC).isoformat()
            result = claw_home.clawctl("cron", "add", "-n", "flaky", "-m", "FLAKY-JOB run",
                                       "--at", at, "-d", "--channel", "ws", "--to", "ops")  # fmt: skip
            return added_id(result), await recv_reply(ws, "was disabled", timeout=40)

    job_id, alert = asyncio.run(watch_alerts())
    assert f"Cron job 'flaky' ({job_id}) was disabled: its last 3 runs failed" in alert["text"]
    assert "scripted refusal" in alert["text"]
    state = job(r, job_id)
    assert not state["enabled"] and state["consecutive_failures"] == 3
    assert state["last_status"] == "failed" and "scripted refusal" in state["last_error"]
    runs = fires(r, job_id)
    assert len(runs) == 3 == len(llm_server.requests_for("FLAKY-JOB"))
    finished = [float(r.hget(k.message_key(f"cron:{job_id}", f"cron-{job_id}-{due}"),
                             "finished_at")) for due, _ in runs]  # fmt: skip
    # Retried 1 s, then 2 s (the cap) after each failure, never sooner.
    for (due, _), done, wait in zip(runs[1:], finished[:-1], (1, 2), strict=True):
        assert wait <= due - done < wait + 2.0, (due, done, wait)
    assert row(claw_home, job_id).endswith("no")
    assert r.zscore(k.BEAT_SCHEDULE, f"{k.BEAT_KEY_PREFIX}cron:{job_id}") is None
    quiet_for(3.0, lambda: len(llm_server.requests_for("FLAKY-JOB")))


def test_the_fleets_own_runs_cannot_add_jobs_but_a_users_message_can(
    fleet_factory: Any, claw_home: Any, redis_server: Any, llm_server: Any
) -> None:
    """A heartbeat run, an autonomous round, the round's sub-agent and the round's answer to
    that sub-agent's report (in the user's own session: only the start its messages carry
    tells it apart from the user's work) are refused; the user's own message is not."""
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    (claw_home.workspace / "HEARTBEAT.md").write_text("- [ ] renew the certificate\n")
    heartbeat, round_, helper = "## HEARTBEAT.md", "[autonomy round", "SUB-AUTO"

    def add(name: str) -> Any:
        return tool_call("cron", {"action": "add", "name": name, "every_sec": 3600,
                                  "message": f"{name}: look again"})  # fmt: skip

    llm_server.push(add("mine"), text("Scheduled."), when="SCHEDULE-IT")
    llm_server.push(add("beat"), text("HEARTBEAT_OK"), when=heartbeat)
    llm_server.add_rule(heartbeat, "HEARTBEAT_OK")
    llm_server.add_rule("[start-up self-check]", "HEARTBEAT_OK")
    llm_server.push(add("round"), tool_call("spawn", {"task": f"{helper} plan the report"}),
                    text("Started a helper."), when=round_)  # fmt: skip
    llm_server.add_rule(round_, "AUTONOMY_IDLE")
    # The sub-agent's run, then the round's session answering its report (which quotes it).
    llm_server.push(add("sub-agent"), text("Planned."), add("report"), text("Done."),
                    when=helper)  # fmt: skip
    fleet = fleet_factory(agents__defaults__heartbeat__every_sec=2,
                          agents__defaults__runtime_control__autonomy_tick_interval_sec=1,
                          agents__defaults__runtime_control__autonomy_min_run_interval_sec=1,
                          agents__defaults__runtime_control__autonomy_idle_threshold_sec=1)  # fmt: skip
    start_fleet(fleet, ingress=True)
    r = redis_server.client()

    async def chat() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            for words, says in [("SCHEDULE-IT hourly", "Scheduled."),
                                ("start autonomous mode, check every 2 seconds", "Autonomous")]:  # fmt: skip
                await ws.send(json.dumps({"type": "message", "text": words, "session": "me"}))
                await recv_reply(ws, says)

    asyncio.run(chat())
    wait_for(lambda: len(llm_server.requests_for(helper)) >= 4 and
             len(llm_server.requests_for(heartbeat)) >= 2, timeout=60,
             what="the heartbeat, the round, its sub-agent and the report's answer")  # fmt: skip

    def told(marker: str, nth: int) -> str:
        """What the cron tool said to the ``nth`` request's call (the next request's end)."""
        said = llm_server.requests_for(marker)[nth + 1]["messages"][-1]
        assert said["role"] == "tool", said
        return str(said["content"])

    users = llm_server.requests_for("SCHEDULE-IT")[1]["messages"][-1]["content"]
    assert users.startswith("Added job "), users
    assert told(heartbeat, 0) == "Error: a run started by the heartbeat cannot create jobs"
    for marker, nth in [(round_, 0), (helper, 0), (helper, 2)]:
        assert told(marker, nth) == "Error: a run started by autonomous mode cannot create jobs"
    assert [job(r, j)["name"] for j in r.hkeys(k.CRON_JOBS)] == ["mine"]
