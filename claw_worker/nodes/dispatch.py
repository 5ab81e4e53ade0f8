"""One action sent to one node, p2p or through the relay, answered with the envelope
(``envelope.py``) and audited (``audit.py``).

- **p2p**: ``POST <node url><route>`` with ``Authorization: Bearer <node token>`` (httpx, no
  proxies from the environment, no redirects, the answer read up to
  ``nodes.max_response_bytes``). Only ``http`` and ``https`` URLs are called.
- **relay**: through the ingress replica that holds the node's WebSocket (``relay.py``).
- **auto**: p2p when the node advertised a URL; when connecting to it fails (refused,
  unreachable, ``nodes.connect_timeout_sec`` passed) and the node keeps a relay connection,
  the relay. A request that reached the node and then timed out is *not* sent again: the node
  may have run it, and a command must not run twice. ``meta.fallback`` says why p2p was
  left.

Refused before anything is sent (``mode`` ``none``): an unknown node (``not_found``), one
whose lease ran out (``offline``), an action it did not advertise (``unsupported_action``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from claw_worker.config.schema import Config
from claw_worker.http_body import ACCEPT_ENCODING, BodyError, read_limited
from claw_worker.nodes import relay
from claw_worker.nodes.audit import DispatchRecord, record
from claw_worker.nodes.envelope import (
    BAD_RESPONSE,
    CAPABILITY,
    NOT_FOUND,
    OFFLINE,
    TIMEOUT,
    TRANSPORT,
    UNAUTHORIZED,
    UNSUPPORTED,
    check_envelope,
    envelope,
    route_for,
)
from claw_worker.nodes.registry import NodeInfo, get_node


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Request:
    node: str
    action: str
    args: dict[str, Any]
    mode: str = "auto"  # auto | p2p | relay
    timeout: float = 30.0
    session: str = ""
    message_id: str = ""


def dispatch(
    client: redis.Redis,
    config: Config,
    workspace: Path,
    req: Request,
    *,
    should_stop: Callable[[], bool] = _never,
) -> dict[str, Any]:
    started = time.monotonic()
    node = get_node(client, req.node)
    used, fallback = "none", None
    if node is None:
        answer = envelope(NOT_FOUND, error=f"no node {req.node!r} is registered (action=status)")
    elif not node.online:
        answer = envelope(OFFLINE, error=f"node {node.id} has not renewed its lease: offline")
    elif not node.supports(req.action):
        have = ", ".join(node.capabilities) or "none"
        answer = envelope(UNSUPPORTED, error=f"node {node.id} has no {CAPABILITY[req.action]} "
                          f"capability (it has: {have})")  # fmt: skip
    else:
        answer, used, fallback = _send(client, config, node, req, should_stop)
    ms = int((time.monotonic() - started) * 1000)
    answer["meta"] = {"node": req.node, "action": req.action, "mode": used, "ms": ms}
    if fallback:
        answer["meta"]["fallback"] = fallback
    record(client, workspace, DispatchRecord(
        node=req.node, action=req.action, mode=used, ok=answer["ok"], code=answer["code"], ms=ms,
        session=req.session, message_id=req.message_id,
    ))  # fmt: skip
    return answer


def _send(
    client: redis.Redis,
    config: Config,
    node: NodeInfo,
    req: Request,
    should_stop: Callable[[], bool],
) -> tuple[dict[str, Any], str, str | None]:
    """The answer, the mode that carried it, and why p2p was left (auto), if it was."""
    body = {"action": req.action, "args": req.args, "timeout_ms": int(req.timeout * 1000)}

    def by_relay() -> dict[str, Any]:
        return relay.send(client, node, body, timeout=req.timeout,
                          max_timeout=config.nodes.max_timeout_sec,
                          should_stop=should_stop)  # fmt: skip

    if req.mode == "relay":
        return by_relay(), "relay", None
    if req.mode == "p2p" or node.url:
        if not node.url:
            return envelope(TRANSPORT, error=f"node {node.id} advertised no URL: it is "
                            "reachable through the relay only (mode relay or auto)"), "p2p", None  # fmt: skip
        answer, unreachable = p2p(config, node, body, req.timeout)
        if req.mode == "auto" and unreachable and node.relay:
            return by_relay(), "relay", f"p2p: {answer['error']}"
        return answer, "p2p", None
    if not node.relay:
        return envelope(TRANSPORT, error=f"node {node.id} advertised no URL and keeps no relay "
                        "connection"), "none", None  # fmt: skip
    return by_relay(), "relay", None


def p2p(
    config: Config, node: NodeInfo, body: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], bool]:
    """The node's answer, and whether it could not be reached at all (nothing was sent)."""
    url = node.url.rstrip("/") + route_for(body["action"])
    if urlsplit(url).scheme not in ("http", "https"):
        return envelope(TRANSPORT, error="the node's URL is not http(s); not called"), False
    cfg = config.nodes
    limits = httpx.Timeout(timeout, connect=min(cfg.connect_timeout_sec, timeout))
    headers = {"Authorization": f"Bearer {node.token}", "Accept-Encoding": ACCEPT_ENCODING}
    try:
        with (
            httpx.Client(timeout=limits, trust_env=False, follow_redirects=False) as http,
            http.stream("POST", url, json=body, headers=headers) as response,
        ):
            # Decoded with a bound: a compressed answer cannot inflate past the cap.
            raw = read_limited(response, cfg.max_response_bytes + 1)
            if len(raw) > cfg.max_response_bytes:
                return envelope(BAD_RESPONSE, error=f"the node's answer is larger than "
                                f"{cfg.max_response_bytes} bytes"), False  # fmt: skip
            status = response.status_code
    except BodyError as exc:
        return envelope(BAD_RESPONSE, error=f"the node's answer: {exc}"), False
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        return envelope(TRANSPORT, error=f"cannot connect to {url}: {_reason(exc)}"), True
    except httpx.TimeoutException:
        return envelope(TIMEOUT, error=f"no answer from {url} within {timeout:g}s"), False
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
        # InvalidURL and IDNA's UnicodeError are no HTTPError: a URL httpx cannot parse, or
        # a redirect's Location it parses even though redirects are not followed.
        return envelope(TRANSPORT, error=f"{url}: {_reason(exc)}"), False
    return _from_response(status, raw), False


def _from_response(status: int, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if check_envelope(data) is None:
        return data  # type: ignore[return-value]
    if status == 401:
        return envelope(UNAUTHORIZED, error="the node refused the token it registered with")
    return envelope(BAD_RESPONSE, error=f"the node answered HTTP {status} without an envelope")


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
