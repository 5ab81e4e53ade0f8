"""The Sentinel's checks of the fleet (beat_schedules/sentinel_fleet.py): Redis, the queues,
the processes and the sessions, each against a fault made on purpose in the test's real
redis-server; with auto_heal the repair happens and is recorded, without it nothing changes.
"""

from __future__ import annotations

import base64
import json
import shutil
import time

from beat_schedules.sentinel import check
from claw_worker import constants as k
from claw_worker.contract import InboundMessage
from claw_worker.control import ControlListener
from claw_worker.process import ProcessIdentity
from claw_worker.queues import KOMBU_PRIORITY_SEP
from claw_worker.session.submit import submit
from claw_worker.session.wakeup import drain_message
from tests.fixtures.procs import wait_for
from tests.test_sentinel_checks import prepare, run, with_settings

# -- Redis ------------------------------------------------------------------------------------


def test_redis_latency_and_memory(fleet_factory, redis_server) -> None:
    _, config, r = prepare(fleet_factory, redis_latency_warn_ms=50, redis_memory_warn_pct=50)
    report = run(r, config)
    assert report["by"]["redis"]["state"] == "ok"
    assert report["by"]["redis_memory"]["detail"].endswith("no maxmemory limit")

    # Every client waits 0.6 s: the first PING of the round takes that long.
    redis_server.client().execute_command("CLIENT", "PAUSE", "600", "ALL")
    found = run(redis_server.client(), config)["by"]["redis"]
    assert found["state"] == "warn" and "over 50 ms" in found["detail"]

    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", str(int(used * 1.5)))  # ~67 %, over the 50 % of this config
    found = run(r, config)["by"]["redis_memory"]
    assert found["state"] == "warn" and "over 50 %" in found["detail"]
    r.config_set("maxmemory-policy", "allkeys-lru")
    found = run(r, config)["by"]["redis_memory"]
    assert found["state"] == "warn" and "use noeviction" in found["detail"]
    r.config_set("maxmemory", "0")
    r.config_set("maxmemory-policy", "noeviction")
    assert run(r, config)["by"]["redis_memory"]["state"] == "ok"


def test_a_full_redis_is_reported_though_it_refuses_the_report(fleet_factory, capsys) -> None:
    """Redis at maxmemory with noeviction refuses writes: before, storing the report raised
    (OOM), so the one round that found "writes are refused" ended in a Celery traceback
    and said nothing of it. Now the finding is logged and the round ends cleanly."""
    _, config, r = prepare(fleet_factory, notify_channel="ws", notify_chat_id="ops")
    r.config_set("maxmemory", "1")  # far under what is used: every write is refused
    try:
        said = check(r, config)
    finally:
        r.config_set("maxmemory", "0")
    assert "redis_memory (fail)" in said and "redis refused" in said, said
    assert r.get(k.SENTINEL_REPORT) is None  # nothing could be written
    logged = capsys.readouterr().out  # this process's log (no file logging set up here)
    assert "sentinel report" in logged and "redis_memory (fail)" in logged, logged
    assert "redis_memory: " in logged and "writes are refused" in logged, logged


def test_a_redis_outage_is_one_finding_with_no_alert_per_check(
    fleet_factory, redis_server, capsys
) -> None:
    """Redis refusing connections: before, every fleet check was reported "crashed:
    ConnectionError" (a traceback each), then storing the report raised, so Celery retried
    the round with a traceback; and had Redis been back for the write, each crashed check
    would have alerted, then noted "OK again". Now the round stops at the first refusal:
    one finding, one log line, and no alert mark is touched."""
    _, config, r = prepare(fleet_factory, notify_channel="ws", notify_chat_id="ops")
    before = run(r, config)  # a normal round, stored
    alerted = r.xlen(k.OUTBOUND_STREAM)
    capsys.readouterr()
    redis_server.stop()
    try:
        said = check(r, config)
    finally:
        redis_server.start()
    assert said.startswith("fail: redis unreachable: ConnectionError"), said
    logged = capsys.readouterr().out
    assert logged.count("sentinel: redis unreachable") == 1 and "crashed" not in logged, logged
    assert "Traceback" not in logged, logged

    # Redis is back: the outage left no trace in the report or the alerts, and the next
    # round alerts nothing new (the same checks fail as before, within the quiet period).
    wait_for(lambda: r.ping(), what="the test's client reconnected")
    assert json.loads(r.get(k.SENTINEL_REPORT))["time"] == before["time"]
    assert r.xlen(k.OUTBOUND_STREAM) == alerted
    after = run(r, config)
    assert after["failing"] == before["failing"] and r.xlen(k.OUTBOUND_STREAM) == alerted
    texts = [json.loads(f["data"])["text"] for _, f in r.xrange(k.OUTBOUND_STREAM)]
    assert not [t for t in texts if "crashed" in t or "OK again" in t], texts


def test_redis_persistence_off_and_failing(fleet_factory, redis_server) -> None:
    _, config, r = prepare(fleet_factory)
    assert run(r, config)["by"]["redis_persistence"]["detail"] == "AOF on"

    r.config_set("appendonly", "no")  # the fixture's Redis has no RDB schedule either
    found = run(r, config)["by"]["redis_persistence"]
    assert found["state"] == "warn" and "no persistence" in found["detail"]

    # A snapshot fails when Redis's directory is gone (even for root; and `dir` is a
    # protected config, so this Redis cannot be pointed elsewhere).
    shutil.rmtree(redis_server.data_dir)
    r.bgsave()
    wait_for(lambda: r.info("persistence")["rdb_last_bgsave_status"] == "err", what="BGSAVE err")
    found = run(r, config)["by"]["redis_persistence"]
    assert found["state"] == "fail" and "rdb_last_bgsave_status=err" in found["detail"]


# -- queues, processes ------------------------------------------------------------------------


def test_queue_depth_over_the_threshold_counts_priority_levels(fleet_factory) -> None:
    _, config, r = prepare(fleet_factory, max_queue_depth=3)
    assert run(r, config)["by"]["queues"]["state"] == "ok"
    for _ in range(2):
        r.lpush(k.QUEUE_CRON, drain_message("q:x", queue=k.QUEUE_CRON))
        r.lpush(f"{k.QUEUE_CRON}{KOMBU_PRIORITY_SEP}3", drain_message("q:x", queue=k.QUEUE_CRON))
    r.lpush(k.QUEUE_TOOLS, drain_message("q:y", queue=k.QUEUE_TOOLS))
    found = run(r, config)["by"]["queues"]
    assert found["state"] == "warn"
    assert found["detail"] == "sessions=0 tools=1 cron=4 health=0: cron over 3"


def test_no_worker_no_beat_and_a_stale_beat_lock(fleet_factory) -> None:
    _, config, r = prepare(fleet_factory)
    report = run(r, config)
    assert report["by"]["workers"]["state"] == "fail"
    assert "no live worker" in report["by"]["workers"]["detail"]
    assert report["by"]["beat"]["state"] == "fail" and "no beat" in report["by"]["beat"]["detail"]
    r.set(k.BEAT_LOCK_KEY, "token-of-a-dead-beat", px=60_000)
    found = run(r, config)["by"]["beat"]
    assert found["state"] == "warn" and "stale lock" in found["detail"]

    # A beat in the registry (its control listener's heartbeat) that holds no lock.
    r.delete(k.BEAT_LOCK_KEY)
    beat = ControlListener(r, ProcessIdentity("beat", "beat-9@h", "h", 9)).start()
    try:
        wait_for(lambda: r.hexists(k.PROCS, "beat-9@h/9"), what="the beat's registration")
        found = run(r, config)["by"]["beat"]
        assert found["state"] == "fail" and "beat-9@h is live but none holds" in found["detail"]
        r.set(k.BEAT_LOCK_KEY, "its token", px=60_000)
        assert run(r, config)["by"]["beat"]["state"] == "ok"
    finally:
        beat.stop()


# -- sessions ---------------------------------------------------------------------------------


def _message(session: str, text: str) -> InboundMessage:
    return InboundMessage(channel="api", chat_id=session, session_key=session, text=text)


def test_stale_lease_and_a_run_going_on_too_long(fleet_factory) -> None:
    _, config, r = prepare(fleet_factory, auto_heal=False, stuck_run_sec=60)
    r.set(k.lease_key("s:stale"), "token-of-nobody")  # no TTL
    r.set(k.lease_key("s:live"), "token", px=60_000)
    # A message in flight for 2000 s under a live lease.
    message = _message("s:long", "a long one")
    submit(r, config, message)
    r.lmove(k.mailbox_key("s:long"), k.inflight_key("s:long"), "LEFT", "RIGHT")
    key = k.message_key("s:long", message.message_id)
    r.hset(key, mapping={"status": "running", "started_at": time.time() - 2000})
    r.set(k.lease_key("s:long"), "token", px=60_000)

    report = run(r, config)
    stale, stuck = report["by"]["stale_leases"], report["by"]["stuck_runs"]
    assert stale["state"] == "fail" and "s:stale" in stale["detail"] and stale["healed"] == ""
    assert "s:live" not in stale["detail"] and r.get(k.lease_key("s:stale"))
    assert stuck["state"] == "warn" and "s:long (2000s)" in stuck["detail"]
    assert "a long run may be legitimate" in stuck["detail"]

    report = run(r, with_settings(config, auto_heal=True))
    assert report["by"]["stale_leases"]["healed"] == "cleared the lease of s:stale"
    assert "stale_leases: cleared the lease of s:stale" in report["actions"]
    assert not r.exists(k.lease_key("s:stale")) and r.exists(k.lease_key("s:live"))
    # A long run is reported, never touched.
    assert report["by"]["stuck_runs"]["healed"] == "" and r.llen(k.inflight_key("s:long")) == 1
    assert r.hget(key, "status") == "running"
    assert run(r, config)["by"]["stale_leases"]["state"] == "ok"


def test_a_session_with_mail_and_no_drain_is_woken_and_drained(fleet_factory) -> None:
    fleet, config, r = prepare(fleet_factory, auto_heal=False)
    message = _message("s:idle", "left behind")
    submit(r, config, message)
    r.delete(k.QUEUE_SESSIONS, k.drain_queued_key("s:idle"))  # its wake-up was lost
    r.zadd(k.DIRTY_SESSIONS, {"s:idle": time.time() - 100})  # the sweeper did not come

    found = run(r, config)["by"]["idle_sessions"]
    assert found["state"] == "fail" and "s:idle" in found["detail"] and found["healed"] == ""
    assert r.llen(k.QUEUE_SESSIONS) == 0

    report = run(r, with_settings(config, auto_heal=True))
    assert report["by"]["idle_sessions"]["healed"] == "re-woke s:idle"
    assert "idle_sessions: re-woke s:idle" in report["actions"]
    pushed = json.loads(r.lindex(k.QUEUE_SESSIONS, 0))
    assert pushed["headers"]["task"] == k.TASK_DRAIN
    assert json.loads(base64.b64decode(pushed["body"]))[0] == ["s:idle"]
    assert run(r, config)["by"]["idle_sessions"]["state"] == "ok"  # woken just now

    fleet.start_worker()
    record = k.message_key("s:idle", message.message_id)
    wait_for(lambda: r.hget(record, "status") == "done", timeout=30, what="the drained message")
    assert r.hget(record, "reply") == "echo: left behind"
