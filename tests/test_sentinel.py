"""The Sentinel (beat_schedules/sentinel.py): a crashing check does not stop the others,
alerts are deduplicated and a recovery is noted once, and the whole path runs: beat sends
the check, a worker runs it, the alert reaches a WebSocket chat, and the report shows in
``clawctl status`` and ``/status``. The checks themselves: test_sentinel_checks.py (host)
and test_sentinel_fleet.py (Redis, queues, processes, sessions).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis

from claw_worker import constants as k
from claw_worker.config import workspace_dir
from claw_worker.workspace import create_missing
from tests.fixtures.log_dirs import age, snapshot, write_foreign_files, write_own_logs
from tests.fixtures.procs import wait_for
from tests.fixtures.ws_chat import WsChat
from tests.test_sentinel_checks import prepare, run, with_settings


def alerts(client: redis.Redis, check_name: str) -> list[dict[str, Any]]:
    """The alerts for one check on the outbound stream, oldest first."""
    found = [json.loads(f["data"]) for _, f in client.xrange(k.OUTBOUND_STREAM)]
    return [m for m in found if m["metadata"].get("check") == check_name]


def test_a_check_that_crashes_is_reported_and_the_others_still_run(fleet_factory) -> None:
    _, config, r = prepare(fleet_factory)
    r.set(k.QUEUE_TOOLS, "not a list")  # LLEN answers WRONGTYPE
    report = run(r, config)
    found = report["by"]["queues"]
    assert found["state"] == "fail" and found["detail"].startswith("the check crashed: ")
    assert "WRONGTYPE" in found["detail"]
    assert len(report["results"]) == 13 and report["by"]["idle_sessions"]["state"] == "ok"


# -- alerts -----------------------------------------------------------------------------------


def test_alerts_are_deduplicated_and_a_recovery_is_noted_once(fleet_factory) -> None:
    _, config, r = prepare(
        fleet_factory, auto_heal=False, notify_channel="ws", notify_chat_id="ops"
    )
    ws = workspace_dir(config)
    (ws / "SOUL.md").unlink()
    run(r, config)
    [alert] = alerts(r, "workspace")
    assert alert["channel"] == "ws" and alert["chat_id"] == "ops"
    assert alert["text"].startswith("[Sentinel ") and "FAIL workspace" in alert["text"]
    assert 0 < r.ttl(k.sentinel_alert_key("workspace")) <= 3600

    run(r, config)  # the same fault within the quiet period
    assert len(alerts(r, "workspace")) == 1

    create_missing(ws)  # fixed by hand
    run(r, config)
    run(r, config)
    notes = alerts(r, "workspace")
    assert len(notes) == 2 and "OK again workspace" in notes[1]["text"]

    # A repaired fault says so in its alert, and needs no recovery note.
    r.delete(k.sentinel_alert_key("workspace"))
    (ws / "SOUL.md").unlink()
    run(r, with_settings(config, auto_heal=True))
    run(r, config)
    notes = alerts(r, "workspace")
    assert len(notes) == 3 and "\nRepaired: recreated SOUL.md" in notes[2]["text"]


# -- the whole path: beat -> worker -> alert delivered; clawctl status, /status ----------------


def test_beat_runs_the_sentinel_on_a_worker_and_the_alert_reaches_a_chat(fleet_factory) -> None:
    fleet = fleet_factory(
        sentinel__interval_sec=5, sentinel__min_free_mb=0,
        sentinel__notify_channel="ws", sentinel__notify_chat_id="ops",
    )  # fmt: skip
    r = fleet.redis.client()
    agents = fleet.home.workspace / "AGENTS.md"
    create_missing(fleet.home.workspace)
    fleet.start_ingress()
    fleet.start_worker("w1")
    client = WsChat(f"ws://127.0.0.1:{fleet.port}/ws", "ops")
    try:
        client.send("hold this chat open")
        wait_for(lambda: client.replies("echo: hold this chat open"), timeout=30, what="echo")
        fleet.start_beat()

        def report_after(since: float) -> dict[str, Any] | None:
            raw = r.get(k.SENTINEL_REPORT)
            report = json.loads(raw) if raw else None
            return report if report and report["time"] > since else None

        first = wait_for(lambda: report_after(0), timeout=40, what="the first report")
        by = {x["check"]: x for x in first["results"]}
        assert first["process"].startswith("w1@")
        assert by["workers"]["state"] == "ok" and by["beat"]["state"] == "ok", by
        assert by["config"]["state"] == "ok" and by["workspace"]["state"] == "ok"

        agents.unlink()
        alert = wait_for(lambda: client.replies("FAIL workspace"), timeout=30, what="alert")
        assert "Repaired: recreated AGENTS.md" in alert[0] and agents.exists()

        # The same fault within the quiet period: repaired again, no second alert.
        agents.unlink()
        since = time.time()
        healed = wait_for(
            lambda: (rep := report_after(since)) and "workspace: recreated AGENTS.md" in rep["actions"],
            timeout=30, what="the second repair",
        )  # fmt: skip
        assert healed and agents.exists()
        client.send("/status")
        status = wait_for(lambda: client.replies("sentinel ("), timeout=15, what="/status")
        assert re.search(r"\nsentinel \(\d{4}-\d\d-\d\d [\d:]+ UTC\): (ok|warn|fail): ", status[0])
        time.sleep(1.0)  # a bounded window for a second alert that must not come
        assert len(client.replies("FAIL workspace")) == 1
    finally:
        client.close()

    shown = fleet.home.clawctl("status")
    line = next(x for x in shown.stdout.splitlines() if x.startswith("sentinel "))
    assert " at " in line and line.split()[1] in ("ok", "warn", "fail"), line
    data = json.loads(fleet.home.clawctl("status", "--json").stdout)["sentinel"]
    assert data["enabled"] and data["report"]["process"].startswith("w1@")
    assert {x["check"] for x in data["report"]["results"]} >= {"workspace", "beat", "workers"}


def test_switched_off_by_a_reload_it_stops_and_switched_on_again_it_runs(fleet_factory) -> None:
    """`config set sentinel.enabled false` on a running fleet removes beat's entry: before,
    RedBeat kept it and the Sentinel went on checking, healing and alerting until beat
    restarted."""
    fleet = fleet_factory(
        sentinel__interval_sec=5, sentinel__min_free_mb=0,
        agents__defaults__heartbeat__every_sec=2,
    )  # fmt: skip
    r = fleet.redis.client()
    entry = f"{k.BEAT_KEY_PREFIX}sentinel"
    fleet.start_worker("w1")
    fleet.start_beat()
    wait_for(lambda: r.get(k.SENTINEL_REPORT), timeout=40, what="the first report")

    said = fleet.home.clawctl("config", "set", "sentinel.enabled", "false")
    assert "Applied by" in said.stdout and "beat" in said.stdout, said.stdout + said.stderr
    wait_for(lambda: not r.exists(entry), timeout=10, what="the entry removed")
    assert "sentinel" not in r.smembers(f"{k.BEAT_KEY_PREFIX}:statics")
    r.delete(k.SENTINEL_REPORT)
    # A window longer than two Sentinel intervals, measured by beat's own heartbeat ticks.
    ticks = int(r.hget(k.HEARTBEAT_STATE, "ticks") or 0)
    wait_for(lambda: int(r.hget(k.HEARTBEAT_STATE, "ticks") or 0) >= ticks + 6, timeout=40,
             what="six more heartbeat ticks")  # fmt: skip
    assert r.get(k.SENTINEL_REPORT) is None

    fleet.home.clawctl("config", "set", "sentinel.enabled", "true")
    wait_for(lambda: r.get(k.SENTINEL_REPORT), timeout=40, what="a report once on again")
    assert "sentinel" in r.smembers(f"{k.BEAT_KEY_PREFIX}:statics")  # known to a restart


def test_in_a_shared_logs_directory_the_fleet_removes_only_its_own_files(
    fleet_factory, tmp_path
) -> None:
    """``logging.dir`` shared with other programs: retention at a process's start and the
    Sentinel's pruning (beat sends it, a worker runs it) remove clawfleet's expired and
    rotated files and nothing else. Before, syslog's rotations, an operator's notes, another
    program's JSON log and a symlink to a file elsewhere were deleted too."""
    shared, elsewhere = tmp_path / "shared-logs", tmp_path / "elsewhere"
    expired = ["beat-41@gone.log", "beat-41@gone.log.1"]  # idle past retention_days
    write_own_logs(shared, {**dict.fromkeys(expired, 2), "w9@gone.log": 2,
                            "w9@gone.log.1": 700, "w9@gone.log.2": 700})  # fmt: skip
    write_foreign_files(shared, elsewhere, kb=700)
    ours = {*expired, "w9@gone.log", "w9@gone.log.1", "w9@gone.log.2"}
    age([p for p in shared.iterdir() if p.name not in ours] + [shared / n for n in expired], 3)
    age([shared / "w9@gone.log.2"], days=0.2)  # the oldest rotation: the one pruned
    age([shared / "w9@gone.log.1"], days=0.1)
    before = snapshot(shared, elsewhere)

    fleet = fleet_factory(
        logging__dir=str(shared), logging__retention_days=1,
        sentinel__interval_sec=5, sentinel__min_free_mb=0, sentinel__logs_max_mb=1,
    )  # fmt: skip
    r = fleet.redis.client()
    fleet.start_worker("w1")
    fleet.start_beat()

    def pruned() -> dict[str, Any] | None:
        raw = r.get(k.SENTINEL_REPORT)
        report = json.loads(raw) if raw else None
        return (
            report
            if report and any(a.startswith("logs: pruned") for a in report["actions"])
            else None
        )

    report = wait_for(pruned, timeout=60, what="the Sentinel pruning the logs")
    assert "logs: pruned 1 rotated log file(s)" in " ".join(report["actions"]), report
    after = snapshot(shared, elsewhere)
    gone = {path.name for path in set(before) - set(after)}
    assert gone == {*expired, "w9@gone.log.2"}
    assert all(after[path] == content for path, content in before.items() if path in after)
