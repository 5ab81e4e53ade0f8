"""The wire every node speaks: its actions, the HTTP route of each, the capability each
needs, and the one response envelope every dispatch answers with.

Shared by the worker (``dispatch.py``) and the node agent (``claw_node``); standard library
only, so the node agent stays light.

A request is ``POST <route>`` with ``Authorization: Bearer <the node's token>`` and the body
``{"action": ..., "args": {...}, "timeout_ms": N}``; routes by action: ``/run``,
``/camera/snap``, ``/screen/record``, ``/location/get``, ``canvas_<x>`` to ``/canvas/<x>``,
anything else (``invoke``, ``agent_task``) to ``/invoke``. Through the relay the same
request travels in a WebSocket frame with the token beside it.

The envelope::

    {"ok": bool, "code": "ok" | "unsupported_action" | "transport_error" | ...,
     "error": str | None,
     "payload": {"media_type": ..., "storage": "inline" | "url" | "path" | "none",
                 "text" | "data" | "image" | "url" | "path": ..., "meta": {...}} | None,
     "meta": {"node", "action", "mode", "ms", "fallback"?}}

``text`` (inline text), ``data`` (inline JSON) and ``image`` (inline base64) are the inline
forms; ``url`` and ``path`` point elsewhere. ``meta`` at the top is added by the worker: which
node, which mode carried it (``p2p``, ``relay``, ``none`` when nothing was sent) and how long
it took.
"""

from __future__ import annotations

import re
from typing import Any

# What the nodes tool can send to a node, and the capability a node advertises for each.
CAPABILITY = {
    "run": "run",
    "invoke": "invoke",
    "camera_snap": "camera",
    "screen_record": "screen",
    "location_get": "location",
    "agent_task": "model",
}
ACTIONS = tuple(CAPABILITY)
ROUTES = {
    "run": "/run",
    "camera_snap": "/camera/snap",
    "screen_record": "/screen/record",
    "location_get": "/location/get",
}
INVOKE_ROUTE = "/invoke"
CANVAS_PREFIX = "canvas_"

OK = "ok"
UNSUPPORTED = "unsupported_action"
TRANSPORT = "transport_error"
TIMEOUT = "timeout"
UNAUTHORIZED = "unauthorized"
BAD_REQUEST = "bad_request"
DENIED = "denied"  # the node's guard refused it (a denied command)
NOT_FOUND = "not_found"  # no such node in the registry
OFFLINE = "offline"  # registered, but its lease ran out
NODE_ERROR = "node_error"  # the node tried and failed
BAD_RESPONSE = "bad_response"  # the node's answer is not an envelope
CANCELLED = "cancelled"  # /stop while waiting

STORAGES = frozenset({"inline", "url", "path", "none"})
CODE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_ERROR_CHARS = 2000


def route_for(action: str) -> str:
    """The HTTP path a node serves ``action`` on."""
    if action in ROUTES:
        return ROUTES[action]
    if action.startswith(CANVAS_PREFIX) and len(action) > len(CANVAS_PREFIX):
        return "/canvas/" + action[len(CANVAS_PREFIX) :]
    return INVOKE_ROUTE


def envelope(
    code: str,
    *,
    error: str | None = None,
    payload: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {"ok": code == OK, "code": code, "error": error, "payload": payload}
    if meta is not None:
        answer["meta"] = meta
    return answer


def text_payload(text: str, **meta: Any) -> dict[str, Any]:
    return {"media_type": "text/plain", "storage": "inline", "text": text, "meta": meta}


def json_payload(data: Any, **meta: Any) -> dict[str, Any]:
    return {"media_type": "application/json", "storage": "inline", "data": data, "meta": meta}


def check_envelope(data: Any) -> str | None:
    """Why ``data`` (a node's answer) is not an envelope, or None when it is one."""
    if not isinstance(data, dict):
        return "the answer is not a JSON object"
    unknown = set(data) - {"ok", "code", "error", "payload", "meta"}
    if unknown:
        return f"unknown field(s) {', '.join(sorted(unknown))[:100]}"
    code = data.get("code")
    if not isinstance(code, str) or not CODE_PATTERN.match(code):
        return "code is missing or not a short lower-case word"
    if data.get("ok") is not (code == OK):
        return "ok must be true exactly when code is ok"
    error = data.get("error")
    if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
        return f"error must be text of at most {MAX_ERROR_CHARS} characters"
    payload = data.get("payload")
    if payload is None:
        return None
    if not isinstance(payload, dict):
        return "payload must be an object"
    if not isinstance(payload.get("media_type"), str):
        return "payload.media_type must be text"
    if payload.get("storage") not in STORAGES:
        return f"payload.storage must be one of {', '.join(sorted(STORAGES))}"
    if not isinstance(payload.get("meta", {}), dict):
        return "payload.meta must be an object"
    return None
