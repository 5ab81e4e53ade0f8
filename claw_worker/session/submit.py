"""Putting a message into a session's mailbox from inside the fleet (sync, for workers).

Cron jobs, heartbeats, autonomy rounds and the start-up self-check are messages like any
user's: stored and woken by the same ENQUEUE script as the ingress's (``enqueue.py``), so
they queue in order behind the session's other messages and run under its lease. The
message's ``metadata["origin"]`` says where it came from (``contract.Origin``).
"""

from __future__ import annotations

import redis

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.session import scripts as lua
from claw_worker.session.enqueue import Enqueued, stage_enqueue
from claw_worker.session.runs import new_run_id


def submit(client: redis.Redis, config: Config, message: InboundMessage) -> Enqueued:
    """Store ``message`` and wake its session; a duplicate message_id is dropped."""
    control = config.agents.defaults.runtime_control
    run_id = new_run_id()
    with client.pipeline(transaction=False) as pipe:
        stage_enqueue(
            pipe, client.register_script(lua.ENQUEUE), message, run_id,
            ttl_sec=config.worker.message_ttl_sec, run_ttl_sec=control.run_state_ttl_seconds,
            run_max=control.run_state_max,
        )  # fmt: skip
        stored, known = pipe.execute()[-1]
    if not int(stored):
        with client.pipeline(transaction=False) as pipe:  # the run recorded for nothing
            pipe.delete(k.run_key(run_id))
            pipe.zrem(k.RUNS_INDEX, run_id)
            pipe.execute()
    return Enqueued(bool(int(stored)), str(known or ""))
