"""The node's API: one :func:`answer` for both ways a request arrives, and the HTTP server
(p2p). Every request must carry the node's own token (``Authorization: Bearer`` over HTTP,
the ``token`` the relay attaches beside a WebSocket request): else 401 ``unauthorized``.

``POST <route>`` with ``{"action", "args", "timeout_ms"}``; the route must be the action's
(``envelope.route_for``). ``GET /health`` answers ``{"status": "ok"}`` without a token.
Bodies over :data:`MAX_BODY_BYTES` are refused before they are read.
"""

from __future__ import annotations

import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from claw_node.actions import Actions
from claw_worker.nodes.envelope import (
    ACTION_PATTERN,
    BAD_REQUEST,
    UNAUTHORIZED,
    envelope,
    route_for,
)

log = logging.getLogger("claw_node")

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_SEC = 30.0
MAX_TIMEOUT_SEC = 3600.0


class NodeAPI:
    def __init__(self, token: str, actions: Actions) -> None:
        self._token = token.encode()
        self.actions = actions

    def authorized(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token)

    def answer(self, path: str, token: str, body: Any) -> tuple[int, dict[str, Any]]:
        """The HTTP status and the envelope for one request."""
        if not self.authorized(token):
            return 401, envelope(UNAUTHORIZED, error="missing or wrong node token")
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            return 400, envelope(BAD_REQUEST, error='the body is {"action", "args", "timeout_ms"}')
        action, args = body["action"], body.get("args", {})
        if not ACTION_PATTERN.match(action):
            return 400, envelope(BAD_REQUEST, error="action must be a short lower-case name")
        if not isinstance(args, dict):
            return 400, envelope(BAD_REQUEST, error="args must be an object")
        if route_for(action) != path:
            return 404, envelope(BAD_REQUEST, error=f"{action} is served on {route_for(action)}")
        timeout_ms = body.get("timeout_ms", int(DEFAULT_TIMEOUT_SEC * 1000))
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
            return 400, envelope(BAD_REQUEST, error="timeout_ms must be a positive integer")
        timeout = min(timeout_ms / 1000, MAX_TIMEOUT_SEC)
        # Answer a little before the caller gives up, so it gets the outcome, not a timeout.
        timeout = max(0.1, timeout - min(1.0, timeout / 10))
        log.info("request action=%s", action)
        return 200, self.actions.handle(action, args, timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: NodeAPI


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection frees its thread

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request line is logged by NodeAPI (without headers: they hold the token)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, envelope(BAD_REQUEST, error="POST a node action; GET /health only"))

    def do_POST(self) -> None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        if not self.server.api.authorized(token):
            self.close_connection = True  # the body is never read
            self._send(401, envelope(UNAUTHORIZED, error="missing or wrong node token"))
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, envelope(BAD_REQUEST, error=f"send a JSON body with Content-Length, "
                                     f"at most {MAX_BODY_BYTES} bytes"))  # fmt: skip
            return
        try:
            body = json.loads(self.rfile.read(int(length)) or b"null")
        except (ValueError, RecursionError):
            self._send(400, envelope(BAD_REQUEST, error="the body is not JSON"))
            return
        status, answer = self.server.api.answer(self.path.split("?", 1)[0], token, body)
        self._send(status, answer)

    def _send(self, status: int, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(api: NodeAPI, host: str, port: int) -> ThreadingHTTPServer:
    """Bind now (an error is the caller's to report); serve with ``serve_forever``."""
    server = _Server((host, port), _Handler)
    server.api = api
    return server
