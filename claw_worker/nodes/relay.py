"""The worker's side of the relay: a request for a node that keeps a WebSocket to an
ingress replica goes through Redis to that replica (``claw_ingress/nodes.py``), which sends
it down the WebSocket with the node's token and pushes the node's answer back.

1. ``claw:conn:nodes:<id>`` names the replica holding the node's connection.
2. One transaction: the mark ``claw:nodes:req:<rid>`` (PX = the deadline: the replica drops
   a request nobody waits for any more, and gives the node what is left of the time) and
   the request on the replica's list ``claw:nodes:relay:<replica>``.
3. The answer comes on ``claw:nodes:reply:<rid>``; the wait is cut in short BLPOPs, so
   /stop ends it at once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from claw_worker import constants as k
from claw_worker.nodes.envelope import (
    BAD_RESPONSE,
    CANCELLED,
    TIMEOUT,
    TRANSPORT,
    check_envelope,
    envelope,
    route_for,
)
from claw_worker.nodes.registry import NodeInfo

WAIT_STEP_SEC = 0.5
QUEUE_SLACK_SEC = 60  # the replica's list outlives the longest request by this


def send(
    client: redis.Redis,
    node: NodeInfo,
    body: dict[str, Any],
    *,
    timeout: float,
    max_timeout: float,
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    replica = client.get(k.node_connection_key(node.id))
    if not replica:
        return envelope(TRANSPORT, error=f"node {node.id} keeps no relay connection to the gateway")
    rid = uuid.uuid4().hex
    request = {"id": rid, "node": node.id, "path": route_for(body["action"]), "body": body}
    queue = k.node_relay_key(replica)
    with client.pipeline(transaction=True) as pipe:
        pipe.set(k.node_request_key(rid), "1", px=max(1, int(timeout * 1000)))
        pipe.rpush(queue, json.dumps(request))
        pipe.expire(queue, int(max_timeout) + QUEUE_SLACK_SEC)
        pipe.execute()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if should_stop():
                return envelope(CANCELLED, error="stopped while waiting for the node")
            left = deadline - time.monotonic()
            if left <= 0:
                return envelope(TIMEOUT, error=f"no answer through the relay within {timeout:g}s")
            got = client.blpop([k.node_reply_key(rid)], timeout=min(WAIT_STEP_SEC, left))
            if got:
                return _answer(got[1])
    finally:
        client.delete(k.node_request_key(rid), k.node_reply_key(rid))


def _answer(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return envelope(BAD_RESPONSE, error="the relay's answer is not JSON")
    problem = check_envelope(data)
    if problem:
        return envelope(BAD_RESPONSE, error=f"the node's answer is not an envelope: {problem}")
    return data
