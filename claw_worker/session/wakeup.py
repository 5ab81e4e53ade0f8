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
import functools
import json
import os
import socket

from claw_worker import constants as k

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED)
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def _message(queue: str, body: str, task_id: str, argsrepr: str, delivery_tag: str) -> dict:
    return {
        "body": body,
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
            "argsrepr": argsrepr,
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
            "delivery_tag": delivery_tag,
        },
    }


# Messages differ only in four strings (body, task id, argsrepr, delivery tag): the rest is
# rendered once per queue, and a message is its fragments joined around the four (4 µs, not
# the 12 µs of building and dumping the dict with two uuid4() each time: every message the
# ingress stores makes one, used or not).
_SLOTS = ("\x00body", "\x00id", "\x00argsrepr", "\x00tag")


@functools.cache
def _template(queue: str) -> list[str]:
    text = json.dumps(_message(queue, *_SLOTS))
    for slot in _SLOTS:
        text = text.replace(json.dumps(slot), "\x00")
    return text.split("\x00")


def _uuid4(hex32: str) -> str:
    """A version-4 UUID's text from 32 random hex digits."""
    variant = "89ab"[int(hex32[16], 16) & 3]
    return f"{hex32[:8]}-{hex32[8:12]}-4{hex32[13:16]}-{variant}{hex32[17:20]}-{hex32[20:]}"


def drain_message(session_key: str, *, queue: str = k.QUEUE_SESSIONS) -> str:
    """The JSON Celery's Redis transport would LPUSH for ``drain(session_key)``."""
    args = json.dumps([session_key])
    body = base64.b64encode(f"[{args}, {{}}, {_EMBED_JSON}]".encode()).decode()
    random = os.urandom(32).hex()
    task_id, tag = f'"{_uuid4(random[:32])}"', f'"{_uuid4(random[32:])}"'
    fills = (f'"{body}"', task_id, task_id, json.dumps(repr([session_key])), task_id, tag)
    parts = _template(queue)
    return "".join(part + fill for part, fill in zip(parts, fills, strict=False)) + parts[-1]
