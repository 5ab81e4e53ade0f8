"""A cron job across a beat failover: two beats on RedBeat's lock, the active one killed with
``kill -9``; the standby takes over, the job keeps firing on its slots, and no due time is
fired twice (a fire is a message id made of the job and its due time, which the mailbox
takes once). Real worker, beats, redis-server and the scripted LLM."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from claw_worker import constants as k
from claw_worker.celery_config import sender_app
from claw_worker.config import load_config
from tests.fixtures.procs import wait_for
from tests.test_cron import added_id, beat_active, fires, job, llm_dues, quiet_for

BEAT = [sys.executable, "-m", "celery", "-A", "claw_worker", "beat", "--loglevel", "INFO"]
LOCK_TIMEOUT_SEC = 5


def test_a_job_fires_on_through_a_beat_failover_never_twice(
    fleet_factory: Any, claw_home: Any, redis_server: Any, llm_server: Any
) -> None:
    fleet = fleet_factory(beat__lock_timeout_sec=LOCK_TIMEOUT_SEC)
    fleet.start_worker()
    beat_a = fleet._spawn("beat-a", BEAT)
    wait_for(lambda: beat_active(fleet, "beat-a"), timeout=30, what="beat A to take the lock")
    fleet._spawn("beat-b", BEAT)
    wait_for(lambda: "beat: Starting" in fleet.output("beat-b"), timeout=30, what="beat B up")
    assert not beat_active(fleet, "beat-b")  # the standby waits on the lock
    r = redis_server.client()

    job_id = added_id(claw_home.clawctl("cron", "add", "-n", "tick", "-m", "FAILOVER-TICK",
                                        "-e", "2"))  # fmt: skip
    wait_for(lambda: len(fires(r, job_id)) >= 3, timeout=30, what="three fires before the kill")
    killed_at = time.time()
    os.killpg(beat_a.pid, signal.SIGKILL)
    beat_a.wait(timeout=10)
    wait_for(lambda: beat_active(fleet, "beat-b"), timeout=LOCK_TIMEOUT_SEC + 20,
             what="beat B to take over")  # fmt: skip
    took_over_at = time.time()
    wait_for(lambda: sum(1 for due, _ in fires(r, job_id) if due > took_over_at) >= 3,
             timeout=30, what="three fires after the takeover")  # fmt: skip

    seen = fires(r, job_id)
    anchor = job(r, job_id)["schedule"]["anchor"]
    # The figures, relative to the kill (shown with pytest -s).
    print(f"\ntakeover seen {took_over_at - killed_at:+.2f} s after the kill")
    for due, stored in seen:
        print(f"  due {due - killed_at:+7.2f}  stored {stored - killed_at:+7.2f}  "
              f"late {stored - due:.2f} s")  # fmt: skip
    dues = [due for due, _ in seen]
    assert len(set(dues)) == len(dues)
    assert all((due - anchor) % 2 == 0 for due in dues)  # only the job's own slots
    # Every fire reached the LLM exactly once: no due time twice, even around the kill.
    wait_for(lambda: len(llm_dues(llm_server, "FAILOVER-TICK")) >= len(dues), what="LLM calls")
    llm = llm_dues(llm_server, "FAILOVER-TICK")
    assert len(set(llm)) == len(llm) == len(dues)
    before = [d for d in dues if d <= killed_at]
    after = [d for d in dues if d > killed_at]
    assert before == list(range(before[0], before[-1] + 1, 2))  # steady before the kill
    # The first slot due after the kill fires when B takes over (late, once); slots that
    # fell wholly inside the outage are not replayed; then B keeps the 2 s pace.
    first = after[0]
    assert first == before[-1] + 2
    # (took_over_at is when the test saw B hold the lock: a slot due in the same instant
    # may fall either side of it.)
    assert after[1:] == list(range(after[1], after[-1] + 1, 2))
    assert after[1] > took_over_at - 2  # no slot from inside the outage was replayed
    for due, stored in seen:
        if due > took_over_at:
            assert 0 <= stored - due < 2.0, (due, stored)

    # The same due time fired twice by hand (what two beats for a moment would do): one run.
    other = added_id(claw_home.clawctl("cron", "add", "-n", "once", "-m", "DUP-CHECK",
                                       "--at", "2099-01-01T00:00:00Z"))  # fmt: skip
    app = sender_app(load_config(claw_home.config_file))
    due = int(time.time())
    for _ in range(2):
        app.send_task(k.TASK_CRON_FIRE, args=[other], kwargs={"due": due}, queue=k.QUEUE_CRON)
    wait_for(lambda: llm_server.requests_for("DUP-CHECK"), timeout=20, what="the fire to run")
    quiet_for(3.0, lambda: len(llm_server.requests_for("DUP-CHECK")))
    assert [d for d, _ in fires(r, other)] == [due]
