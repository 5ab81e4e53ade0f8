"""``clawctl status`` as the one-screen view of a real fleet: processes, queues, sessions
(running, queued, in resource_lock), channels (started or failing, from the ingress's
registry record), cron, autonomy, breakers, nodes and scrape targets; ``--json`` has it all;
fast with everything up and with Redis down."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from beat_schedules.cron_jobs import Change, Job, change_job
from claw_worker.tools.exec_limits import process_limit_holds
from claw_worker.tools.sandbox import find_bwrap
from tests.fixtures.procs import free_port, wait_for
from tests.llm_wire import text

BOT_TOKEN = "7000000002:AAH-status-test-token-abcdefghijk"
LINES = ("config", "workspace", "model", "provider", "logs", "redis", "workers", "processes",
         "queues", "sessions", "channels", "beat", "cron", "autonomy", "breakers", "sentinel",
         "nodes", "exec", "metrics")  # fmt: skip


def status(fleet: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = fleet.home.clawctl("status", "--json")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout), took


def startup(home: Any) -> float:
    """How long this machine takes, now, to start clawctl at all: status is judged against
    it (a fixed bound would fail on a loaded machine and prove nothing on an idle one)."""
    started = time.monotonic()
    assert home.clawctl("--help").returncode == 0
    return time.monotonic() - started


def post(http: Any, text_: str, session: str) -> dict[str, Any]:
    resp = http.post("/api/message", json={"text": text_, "session": session})
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_the_whole_fleet_on_one_screen(fleet_factory, llm_server, redis_server) -> None:
    llm_server.add_rule("HOLD-KEY", text("held", delay=4))
    fleet = fleet_factory(
        channels__telegram__enabled=True,
        channels__telegram__token=BOT_TOKEN,
        channels__telegram__api_base=f"http://127.0.0.1:{free_port()}",  # nobody answers
    )
    fleet.start_ingress()
    fleet.start_worker()
    for args in (("-n", "daily", "-m", "digest", "-c", "0 9 * * *"),
                 ("-n", "often", "-m", "poll", "-e", "600"),
                 ("-n", "broken", "-m", "x", "-e", "900")):  # fmt: skip
        added = fleet.home.clawctl("cron", "add", *args)
        assert added.returncode == 0, added.stderr
    jobs = json.loads(fleet.home.clawctl("cron", "list", "--json").stdout)
    by_name = {job["name"]: job for job in jobs}
    assert fleet.home.clawctl("cron", "disable", by_name["often"]["id"]).returncode == 0

    def failing(job: Job | None, _armed: int | None) -> Change | None:  # as record_result does
        assert job is not None
        update = {"last_status": "failed", "consecutive_failures": 2, "last_error": "boom"}
        return Change(job=job.model_copy(update=update))

    change_job(redis_server.client(), by_name["broken"]["id"], failing)

    with fleet.client() as http:
        post(http, "[keys: repo:status] HOLD-KEY one", "api:status-one")
        wait_for(lambda: llm_server.requests_for("HOLD-KEY"), timeout=30, what="one at the LLM")
        post(http, "[keys: repo:status] HOLD-KEY two", "api:status-two")

        def busy() -> dict[str, Any] | None:
            report, _ = status(fleet)
            sessions, channels = report["sessions"], report["channels"]
            ready = (sessions["running"] >= 1 and sessions["resource_lock"] == 1
                     and channels["telegram"]["errors"])  # fmt: skip
            return report if ready else None

        report = wait_for(busy, timeout=30, interval=0.3, what="a run, a lock waiter, a failure")

    assert report["sessions"]["active"] == 2 and report["sessions"]["probed"] == 2
    telegram = report["channels"]["telegram"]
    assert telegram["enabled"] and telegram["started"] is False
    assert [name.startswith("ingress") for name in telegram["errors"]] == [True]
    assert report["channels"]["ws"]["started"] is True  # the built-in one, from the ingress
    cron = report["cron"]
    assert (cron["enabled"], cron["jobs"], cron["jobs_enabled"]) == (True, 3, 2)
    soonest = min((j for j in jobs if j["name"] != "often"), key=lambda j: j["next_run"])
    assert cron["next"]["name"] == soonest["name"] and cron["next"]["at"] == soonest["next_run"]
    assert [(f["name"], f["consecutive_failures"]) for f in cron["failing"]] == [("broken", 2)]
    assert report["autonomy"] == {"autonomy": False, "session_key": None, "rounds": 0,
                                  "autolearn": False}  # fmt: skip
    assert report["breakers"]["proxy"]["state"] == "closed"
    assert report["nodes"]["registered"] == 0
    roles = sorted(p.split()[0] for p in report["processes"])
    assert roles == ["ingress", "worker"] and len(report["workers"]) == 1
    assert {r["role"] for r in report["registry"]} == {"ingress", "worker"}
    assert [t["process"].split()[0] for t in report["metrics"]] == ["ingress", "worker"]

    human = fleet.home.clawctl("status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(LINES)  # one line each: one screen
    shown = dict(line.split(None, 1) for line in lines)
    assert shown["sessions"].startswith("2 active: ")
    assert "1 messages in resource_lock" in shown["sessions"]
    assert shown["channels"].startswith("telegram failing (") and "ws started" in shown["channels"]
    assert shown["cron"].startswith("3 jobs, 2 enabled; next ")
    assert "failing: broken (" in shown["cron"] and " x2" in shown["cron"]
    assert shown["autonomy"] == "off; auto-learning off"
    assert f"http://127.0.0.1:{fleet.port}/metrics" in shown["metrics"]
    assert BOT_TOKEN.split(":")[1] not in human.stdout + json.dumps(report)

    # Fast with everything up: every probe answers at once (the worker ping returns as soon
    # as each registered worker replied). The CLI's own start-up is most of it.
    took = min(status(fleet)[1] for _ in range(2))
    bound = 3 * startup(fleet.home) + 2.0
    assert took < bound, f"clawctl status took {took:.2f}s (start-up bound {bound:.2f}s)"

    # No beat yet: said plainly, since nothing then fires. Once one runs, it names itself.
    assert report["beat"] == {"active": None, "processes": []}
    assert shown["beat"].startswith("(!) none running: cron, heartbeat")
    fleet.start_beat()
    active = wait_for(lambda: status(fleet)[0]["beat"]["active"], timeout=30,
                      what="the beat to say it is the active one")  # fmt: skip
    assert status(fleet)[0]["beat"]["processes"] == [active]
    assert f"beat       active {active}" in fleet.home.clawctl("status").stdout


def test_status_with_redis_down_is_fast_and_says_unknown(claw_home) -> None:
    claw_home.write_config({"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    started = time.monotonic()
    result = claw_home.clawctl("status")
    took = time.monotonic() - started
    assert result.returncode == 1
    shown = dict(line.split(None, 1) for line in result.stdout.splitlines())
    for name in ("workers", "queues", "sessions", "beat", "cron", "autonomy", "breakers", "sentinel",
                 "nodes", "exec", "metrics"):  # fmt: skip
        assert shown[name] == "unknown", (name, shown[name])
    assert shown["channels"].startswith("none enabled")
    # No waiting out Redis' connect retries (each would be seconds): about a start-up's time.
    bound = 3 * startup(claw_home) + 2.0
    assert took < bound, f"clawctl status took {took:.2f}s with Redis down (bound {bound:.2f}s)"
    report = json.loads(claw_home.clawctl("status", "--json").stdout)
    assert report["sessions"] is None and report["cron"] is None and report["metrics"] is None
    assert report["exec"] is None


def test_status_shows_how_each_worker_isolates_exec_and_follows_a_reload(fleet_factory) -> None:
    """A worker whose commands would run without a sandbox or a process limit is marked on
    the status screen (not only in its own log), and a reload of tools.exec shows."""
    fleet = fleet_factory(tools__exec__sandbox="none", tools__exec__max_processes=64)
    fleet.start_worker()
    if os.getuid() != 0:
        limit = "at most 64 processes (RLIMIT_NPROC)"
    elif process_limit_holds():
        limit = "at most 64 processes (pids cgroup)"
    else:
        limit = "no process limit (root without a writable cgroup v1 pids hierarchy)"

    def exec_line() -> str:
        result = fleet.home.clawctl("status")
        shown = dict(line.split(None, 1) for line in result.stdout.splitlines())
        return shown["exec"]

    line = wait_for(lambda: "@" in exec_line() and exec_line(), timeout=30, what="a worker")
    assert line.endswith(
        ": (!) sandbox none: tools.exec.sandbox is 'none'; no network; " + limit
    ), line
    [worker] = json.loads(fleet.home.clawctl("status", "--json").stdout)["exec"]
    assert worker["sandbox"].startswith("none: ") and worker["max_processes"] == 64

    # The fleet takes a new tools.exec at once; the worker says so at its next heartbeat.
    changed = fleet.home.clawctl("config", "set", "tools.exec.sandbox", "auto")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    bwrap, problem = find_bwrap()
    expected = "sandbox bwrap;" if bwrap else f"(!) sandbox none: {problem};"
    line = wait_for(lambda: expected in exec_line() and exec_line(), timeout=30,
                    what="the reloaded posture")  # fmt: skip
    assert ("(!)" in line) == (not bwrap or limit.startswith("no process limit")), line
