"""Fault injection on a real fleet (issue 3): killed workers, a restarted Redis, a lost
wake-up, a poison message and a run longer than its lease.

Everything here is real processes (worker, beat, ingress, redis-server, scripted LLM);
waits poll with deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import httpx
import redis

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.control import live_processes
from claw_worker.session import scripts as lua
from claw_worker.session.enqueue import enqueue_call
from claw_worker.session.runs import new_run_id
from tests.fixtures.procs import pid_alive, wait_for
from tests.llm_server import error, text

LEASE_SEC = 5  # fleet_config's worker.lease_sec
SWEEP_SEC = 2  # fleet_config's worker.sweep_interval_sec
RECOVERY_DEADLINE = LEASE_SEC + SWEEP_SEC + 20


# -- helpers -------------------------------------------------------------------------------


def post(http: httpx.Client, text_: str, session: str) -> str:
    resp = http.post("/api/message", json={"text": text_, "session": session})
    assert resp.status_code == 202, resp.text
    return resp.json()["message_id"]


def record(r: Any, session: str, message_id: str) -> dict[str, str]:
    return r.hgetall(k.message_key(session, message_id))


def wait_status(
    r: Any, session: str, message_id: str, status: str, *, timeout: float, what: str = ""
) -> dict[str, str]:
    def check() -> dict[str, str] | None:
        rec = record(r, session, message_id)
        if rec.get("status") in ("done", "failed", "cancelled") and rec["status"] != status:
            raise AssertionError(f"{message_id} ended {rec['status']}, wanted {status}: {rec}")
        return rec if rec.get("status") == status else None

    return wait_for(check, timeout=timeout, interval=0.1, what=what or f"{message_id} {status}")


def outbound_for(r: Any, message_id: str) -> list[dict[str, Any]]:
    entries = r.xrange(k.OUTBOUND_STREAM)
    found = [json.loads(fields["data"]) for _id, fields in entries]
    return [e for e in found if e["message_id"] == message_id]


def request_index(llm_server: Any, marker: str) -> list[int]:
    from tests.llm_server import last_user_text

    return [i for i, r in enumerate(llm_server.requests) if marker in last_user_text(r)]


def history_user_texts(r: Any, session: str) -> list[str]:
    texts = []
    for raw in r.lrange(k.history_key(session), 0, -1):
        item = json.loads(raw)
        if item.get("role") == "user":
            texts.append(item.get("content"))
    return texts


def store_without_wake_up(url: str, session: str, text_: str) -> InboundMessage:
    """A message stored whose wake-up was lost (the drain task never reached the queue, as
    when Redis restarts without it or a broker message is dropped): the ingress's own
    ENQUEUE script, with a throwaway list in place of the Celery queue, so only the
    sweeper can find the message."""
    message = InboundMessage(channel="api", chat_id=session, session_key=session, text=text_)
    keys, args = enqueue_call(message, new_run_id(), ttl_sec=3600, run_ttl_sec=3600,
                              run_max=1000)  # fmt: skip
    assert keys[4] == k.QUEUE_SESSIONS
    keys[4] = "test:lost-wake-ups"
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        stored, _run = client.eval(lua.ENQUEUE, len(keys), *keys, *args)
        assert stored == 1 and client.llen("test:lost-wake-ups") == 1
    finally:
        client.close()
    return message


def kill9(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not pid_alive(proc.pid)


# -- 1. a worker killed mid-run --------------------------------------------------------------


def test_worker_killed_mid_run_is_recovered_once_and_in_order(
    fleet_factory, llm_server, redis_server
) -> None:
    r = redis_server.client()
    # Long enough to start w2 and kill w1 mid-answer even on a loaded machine.
    llm_server.add_rule("MARK-X", text("reply to X", delay=10))
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_beat()
    w1 = fleet.start_worker("w1")
    session = "api:killed"
    with fleet.client() as http:
        x_id = post(http, "MARK-X first", session)
        y_id = post(http, "MARK-Y second", session)
        wait_for(lambda: llm_server.requests_for("MARK-X"), timeout=30, what="X at the LLM")
        # A second live worker before the kill; then the holder dies mid-answer.
        fleet.start_worker("w2")
        assert record(r, session, y_id)["status"] == "queued"
        killed_at = time.monotonic()
        kill9(w1)

        x_done = wait_status(r, session, x_id, "done", timeout=RECOVERY_DEADLINE)
        recovered_in = time.monotonic() - killed_at
        y_done = wait_status(r, session, y_id, "done", timeout=30)

    assert recovered_in < RECOVERY_DEADLINE
    assert x_done["reply"] == "reply to X" and int(x_done["attempts"]) == 2
    assert y_done["reply"] == "echo: MARK-Y second" and int(y_done["attempts"]) == 1
    # X ran twice (killed, then recovered); Y only after X's second run started.
    x_runs, y_runs = request_index(llm_server, "MARK-X"), request_index(llm_server, "MARK-Y")
    assert len(x_runs) == 2 and len(y_runs) == 1
    assert y_runs[0] > x_runs[1]
    assert float(y_done["started_at"]) >= float(x_done["finished_at"])
    # The user got exactly one reply for each message.
    assert [e["text"] for e in outbound_for(r, x_id)] == ["reply to X"]
    assert [e["text"] for e in outbound_for(r, y_id)] == ["echo: MARK-Y second"]
    assert history_user_texts(r, session) == ["MARK-X first", "MARK-Y second"]


# -- 2. Redis restarted -----------------------------------------------------------------------


def assert_503_while_down(http: httpx.Client, session: str, known_id: str) -> None:
    for i in range(3):
        resp = http.post("/api/message", json={"text": f"while down {i}", "session": session})
        assert resp.status_code == 503, resp.text
        assert resp.headers.get("retry-after"), resp.headers
    resp = http.get(f"/api/messages/{known_id}")
    assert resp.status_code == 503 and resp.headers.get("retry-after")


def post_until_accepted(http: httpx.Client, text_: str, session: str) -> str:
    """After Redis is back: the ingress (not restarted) accepts again; never a 202 before."""

    def attempt() -> str | None:
        resp = http.post("/api/message", json={"text": text_, "session": session})
        assert resp.status_code in (202, 503), resp.text
        return resp.json()["message_id"] if resp.status_code == 202 else None

    return wait_for(attempt, timeout=30, interval=0.2, what="ingress to accept again")


def test_redis_restart_with_queued_messages_and_no_worker(
    fleet_factory, llm_server, redis_server
) -> None:
    fleet = fleet_factory()
    ingress = fleet.start_ingress()
    queued: list[tuple[str, str]] = []
    with fleet.client() as http:
        for i in range(3):
            queued.append(("api:rs-a", post(http, f"A{i}", "api:rs-a")))
        queued.append(("api:rs-b", post(http, "B0", "api:rs-b")))
        redis_server.stop()  # SIGTERM: appendonly + appendfsync always keeps everything
        assert_503_while_down(http, "api:rs-a", queued[0][1])
        redis_server.start()
        queued.append(("api:rs-a", post_until_accepted(http, "A-after", "api:rs-a")))
        assert ingress.poll() is None  # the same ingress process, reconnected
        r = redis_server.client()
        for session, mid in queued:
            assert record(r, session, mid)["status"] == "queued"
        fleet.start_worker()
        fleet.start_beat()
        for session, mid in queued:
            wait_status(r, session, mid, "done", timeout=RECOVERY_DEADLINE)
    assert history_user_texts(r, "api:rs-a") == ["A0", "A1", "A2", "A-after"]
    for _session, mid in queued:
        assert len(outbound_for(r, mid)) == 1


def test_redis_restart_under_a_running_worker(fleet_factory, llm_server, redis_server) -> None:
    llm_server.add_rule("SLOW-R", text("slow reply", delay=4))
    fleet = fleet_factory()
    ingress = fleet.start_ingress()
    beat = fleet.start_beat()
    worker = fleet.start_worker()
    r = redis_server.client()
    session = "api:rs-live"
    with fleet.client() as http:
        wait_status(r, session, post(http, "warm-up", session), "done", timeout=30)
        slow_id = post(http, "SLOW-R during restart", session)
        behind_id = post(http, "behind the slow one", session)
        wait_for(lambda: llm_server.requests_for("SLOW-R"), timeout=30, what="slow run started")
        redis_server.stop()
        assert_503_while_down(http, session, slow_id)
        # Down for at least one of beat's ticks (each is at most 1 s apart): beat must ride
        # it out, not exit on the error of that tick.
        wait_for(lambda: "beat: redis unavailable" in fleet.output("beat"), timeout=30,
                 what="beat to tick while Redis is down")  # fmt: skip
        assert beat.poll() is None, fleet.output("beat")[-3000:]
        redis_server.start()
        after_id = post_until_accepted(http, "after restart", session)
        r = redis_server.client()
        for mid in (slow_id, behind_id, after_id):
            wait_status(r, session, mid, "done", timeout=RECOVERY_DEADLINE + 10)
        # The worker consumes new wake-ups after the restart (another session) ...
        other_id = post(http, "another session after restart", "api:rs-other")
        wait_status(r, "api:rs-other", other_id, "done", timeout=RECOVERY_DEADLINE)
        # ... and beat's sweeper still runs: a message stored without a wake-up is found.
        orphan = store_without_wake_up(redis_server.url, "api:rs-orphan", "orphan after restart")
        wait_status(r, "api:rs-orphan", orphan.message_id, "done", timeout=RECOVERY_DEADLINE)
    assert worker.poll() is None and ingress.poll() is None  # reconnected, not restarted
    assert beat.poll() is None
    assert history_user_texts(r, session) == [
        "warm-up", "SLOW-R during restart", "behind the slow one", "after restart"
    ]  # fmt: skip
    for mid in (slow_id, behind_id, after_id):
        assert len(outbound_for(r, mid)) == 1
    assert record(r, session, slow_id)["reply"] == "slow reply"


def test_beat_that_lost_its_lock_waits_for_it_and_then_carries_on(
    fleet_factory, llm_server, redis_server
) -> None:
    """Another holder of the one-active-beat lock (a standby that took over while this beat
    could not reach Redis): the beat neither exits nor runs beside it; it waits and, once
    the lock is free, is the active beat again (its sweeper finds an orphaned message)."""
    fleet = fleet_factory()
    beat = fleet.start_beat()
    fleet.start_worker()
    r = redis_server.client()
    wait_for(lambda: r.get(k.BEAT_LOCK_KEY), timeout=30, what="beat to take its lock")
    r.set(k.BEAT_LOCK_KEY, "another-beat", ex=60)
    wait_for(lambda: "beat: lost the active-beat lock" in fleet.output("beat"), timeout=30,
             what="beat to notice it lost the lock")  # fmt: skip
    assert beat.poll() is None, fleet.output("beat")[-3000:]
    assert r.get(k.BEAT_LOCK_KEY) == "another-beat"  # waited: did not take it over
    r.delete(k.BEAT_LOCK_KEY)  # the other beat is gone
    orphan = store_without_wake_up(redis_server.url, "api:lock-orphan", "orphan after lock loss")
    wait_status(r, "api:lock-orphan", orphan.message_id, "done", timeout=RECOVERY_DEADLINE)
    assert "beat: holds the active-beat lock" in fleet.output("beat")
    assert beat.poll() is None


def test_beat_started_while_redis_is_down_waits_for_it(
    fleet_factory, llm_server, redis_server
) -> None:
    """A beat (active or standby) that starts before Redis is up waits for it, rather than
    dying after RedBeat's retries, and then runs: its sweeper finds an orphaned message."""
    fleet = fleet_factory()
    redis_server.stop()
    beat = fleet.start_beat()
    wait_for(lambda: "beat: waiting for redis" in fleet.output("beat"), timeout=30,
             what="beat to wait for Redis")  # fmt: skip
    assert beat.poll() is None, fleet.output("beat")[-3000:]
    redis_server.start()
    fleet.start_worker()
    r = redis_server.client()
    orphan = store_without_wake_up(redis_server.url, "api:late-redis", "orphan, late redis")
    wait_status(r, "api:late-redis", orphan.message_id, "done", timeout=RECOVERY_DEADLINE)
    assert beat.poll() is None


def test_standby_beat_rides_out_a_redis_restart_and_takes_over(
    fleet_factory, llm_server, redis_server
) -> None:
    """The standby waits on the lock inside RedBeat's start-up handler, whose error Celery
    swallows when Redis goes away; it must keep waiting, and take over when the active
    beat dies after Redis is back."""
    fleet = fleet_factory(beat__lock_timeout_sec=6)
    active = fleet.start_beat()
    r = redis_server.client()
    wait_for(lambda: r.get(k.BEAT_LOCK_KEY), timeout=30, what="the first beat to take the lock")
    standby = fleet.start_beat("beat-b")
    # Its schedule set up (the record says so: the banner's lazy scheduler registers the
    # process before that), so RedBeat's start-up handler is waiting on the lock.
    wait_for(lambda: [p for p in live_processes(r) if p["role"] == "beat"
                      and p["pid"] == standby.pid and "active" in p],
             timeout=30, what="the standby to set up its schedule")  # fmt: skip
    redis_server.stop()
    # RedBeat's handler may retry its calls for its retry_period (30 s) before it gives up.
    wait_for(lambda: "beat: waiting for the active-beat lock" in fleet.output("beat-b"),
             timeout=60, what="the standby to wait again after the outage")  # fmt: skip
    redis_server.start()
    r = redis_server.client()
    assert active.poll() is None and standby.poll() is None
    kill9(active)
    fleet.start_worker()
    orphan = store_without_wake_up(redis_server.url, "api:standby", "orphan for the standby")
    wait_status(r, "api:standby", orphan.message_id, "done", timeout=RECOVERY_DEADLINE + 6)
    assert "beat: holds the active-beat lock" in fleet.output("beat-b")
    assert standby.poll() is None


# RedBeat's set-up (the static entries written to Redis) with Redis gone in the middle: a
# real scheduler on the fleet's config, made lazily (as Celery's banner makes it), whose
# set-up starts once Redis no longer answers.
SETUP_IN_AN_OUTAGE = """
import redis
from beat_schedules.scheduler import FleetScheduler
from claw_worker.celery import app
scheduler = FleetScheduler(app=app, lazy=True)
print("scheduler made", flush=True)
probe = redis.Redis.from_url(app.conf.redbeat_redis_url)
while True:
    try:
        probe.ping()
    except redis.ConnectionError:
        break
scheduler.setup_schedule()
print("schedule written", flush=True)
"""


def test_beat_whose_redis_goes_away_while_it_writes_the_schedule_waits(
    fleet_factory, redis_server
) -> None:
    """Before, the error ended beat before its first tick (a standby started during a
    Redis restart crashed); now it waits for Redis and writes the entries."""
    fleet = fleet_factory()
    setup = fleet._spawn("setup", [sys.executable, "-c", SETUP_IN_AN_OUTAGE])
    wait_for(lambda: "scheduler made" in fleet.output("setup"), timeout=30,
             what="the scheduler to be made")  # fmt: skip
    redis_server.stop()
    # RedBeat retries its plain commands for its retry_period (30 s) before giving up.
    wait_for(lambda: setup.poll() is not None
             or "redis went away while writing the schedule" in fleet.output("setup"),
             timeout=60, what="the set-up to fail")  # fmt: skip
    assert setup.poll() is None, fleet.output("setup")[-3000:]
    redis_server.start()
    wait_for(lambda: "schedule written" in fleet.output("setup"), timeout=30,
             what="the set-up to finish once Redis is back")  # fmt: skip
    assert redis_server.client().zcard(k.BEAT_SCHEDULE) > 0


# -- 3. the ingress died between storing and sending the wake-up ------------------------------


def test_message_stored_without_a_wake_up_is_found_by_the_sweeper(
    fleet_factory, llm_server, redis_server
) -> None:
    fleet = fleet_factory()
    fleet.start_worker()
    fleet.start_beat()
    message = store_without_wake_up(redis_server.url, "api:orphan", "nobody woke me")
    r = redis_server.client()
    assert r.zscore(k.DIRTY_SESSIONS, "api:orphan") is not None
    done = wait_status(r, "api:orphan", message.message_id, "done", timeout=SWEEP_SEC * 2 + 20)
    assert done["reply"] == "echo: nobody woke me"
    assert len(llm_server.requests_for("nobody woke me")) == 1
    assert len(outbound_for(r, message.message_id)) == 1
    # Once clean, the sweeper forgets the session.
    wait_for(
        lambda: r.zscore(k.DIRTY_SESSIONS, "api:orphan") is None,
        timeout=SWEEP_SEC * 3 + 10,
        what="sweeper to forget the clean session",
    )


# -- 4. a poison message ------------------------------------------------------------------


def test_poison_message_fails_after_max_attempts_and_the_session_moves_on(
    fleet_factory, llm_server, redis_server
) -> None:
    llm_server.add_rule("POISON", error(500, {"error": {"message": "boom", "type": "server"}}))
    fleet = fleet_factory(worker__max_attempts=2)
    fleet.start_ingress()
    fleet.start_beat()
    fleet.start_worker()
    r = redis_server.client()
    session = "api:poison"
    with fleet.client() as http:
        bad_id = post(http, "POISON pill", session)
        good_id = post(http, "a normal message", session)
        failed = wait_status(r, session, bad_id, "failed", timeout=40)
        done = wait_status(r, session, good_id, "done", timeout=30)
        via_api = http.get(f"/api/messages/{bad_id}").json()

    prefix = Config().agents.defaults.texts.message_failed.split("%s")[0]
    assert failed["reply"].startswith(prefix) and "500" in failed["reply"]
    assert via_api["status"] == "failed" and via_api["reply"] == failed["reply"]
    assert via_api["attempts"] == 2 and failed["error"]
    assert len(llm_server.requests_for("POISON")) == 2  # bounded: max_attempts runs
    [reply] = outbound_for(r, bad_id)
    assert reply["status"] == "failed" and reply["text"] == failed["reply"]
    assert done["reply"] == "echo: a normal message"
    assert (
        request_index(llm_server, "a normal message")[0] > request_index(llm_server, "POISON")[-1]
    )
    assert len(outbound_for(r, good_id)) == 1


# -- 5. a run longer than its lease --------------------------------------------------------


def test_run_longer_than_the_lease_keeps_it_and_runs_once(
    fleet_factory, llm_server, redis_server
) -> None:
    llm_server.add_rule("LONG-RUN", text("long reply", delay=12))
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.start_beat()
    r = redis_server.client()
    session = "api:long"
    lease_key = k.lease_key(session)
    with fleet.client() as http:
        long_id = post(http, "LONG-RUN please", session)
        wait_for(lambda: llm_server.requests_for("LONG-RUN"), timeout=30, what="long run started")
        started = time.monotonic()
        token = r.get(lease_key)
        assert token
        # The lease is renewed (its TTL goes back up) by the same holder ...
        seen = {"min": r.pttl(lease_key)}

        def renewed() -> bool:
            assert r.get(lease_key) == token, "lease changed hands during the run"
            ttl = r.pttl(lease_key)
            if ttl > seen["min"] + 500:
                return True
            seen["min"] = min(seen["min"], ttl)
            return False

        wait_for(renewed, timeout=LEASE_SEC, interval=0.1, what="lease renewal")

        # ... and still held by it past the lease time (plus a sweep).
        def outlived() -> bool:
            assert r.get(lease_key) == token, "lease lost during the run"
            return time.monotonic() - started > LEASE_SEC + SWEEP_SEC

        wait_for(outlived, timeout=LEASE_SEC + SWEEP_SEC + 5, interval=0.2,
                 what="the run to outlive its lease time")  # fmt: skip
        done = wait_status(r, session, long_id, "done", timeout=30)
        follow_id = post(http, "after the long one", session)
        wait_status(r, session, follow_id, "done", timeout=20)

    assert done["reply"] == "long reply" and int(done["attempts"]) == 1
    assert len(llm_server.requests_for("LONG-RUN")) == 1
    assert len(outbound_for(r, long_id)) == 1
