"""The drain wake-up as a ready-made Celery message, pushed by the enqueue script itself.

Sending ``drain`` through Celery from the ingress cost a kombu publish per message (plus a
``task-sent`` event and a result-channel subscription, for a task that returns nothing),
from a thread competing with the event loop for the GIL: a third of the ingress's time under
load. Instead the ingress builds the message Celery's Redis transport would have put on the
queue (protocol 2: headers, a base64 JSON body ``[args, kwargs, embed]``, the delivery
properties) and the enqueue script LPUSHes it in the same round trip that stores the user's
message, unless a drain is already queued for the session. Workers consume it like any
other task. ``tests/test_wakeup.py`` checks the shape against the message Celery itself
publishes.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid

from claw_worker import constants as k

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def drain_message(session_key: str, *, queue: str = k.QUEUE_SESSIONS) -> str:
    """The JSON Celery's Redis transport would LPUSH for ``drain(session_key)``."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[session_key], {}, _EMBED]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": k.TASK_DRAIN,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr([session_key]),
                "kwargsrepr": "{}",
                "origin": _ORIGIN,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )
