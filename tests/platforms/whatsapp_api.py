"""A loopback WhatsApp, both ways, as Meta's Cloud API documentation and the bridges' code
describe it; written from them, independently of the adapter.

``GraphAPI`` (the Cloud API's Graph endpoints, under ``/<version>``):
  GET  /<version>/<phone_number_id>?fields=id        -> {"id": ...}
  POST /<version>/<phone_number_id>/messages
       {"messaging_product": "whatsapp", "to", "type": "text", "text": {"body"},
        "context": {"message_id"}}                    -> {"messaging_product", "contacts",
                                                          "messages": [{"id": "wamid..."}]}
Calls need ``Authorization: Bearer <ACCESS_TOKEN>`` (else HTTP 401, code 190). Errors are
Graph errors, ``{"error": {"message", "type", "code", "error_data", "fbtrace_id"}}``;
``fail_next(status, code)`` scripts the next send's answer. Every send is in ``sends``
(body, the answer's status and code).

The push side: ``notification`` builds a ``whatsapp_business_account`` webhook body
(``entry[].changes[].value`` with ``messages``/``contacts`` or ``statuses``) and
``signed`` the headers Meta sends with it: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of
the raw body keyed by the app secret>``.

``FakeBridge``: a WebSocket server speaking nanobot's WhatsApp bridge protocol: a client
first sends ``{"type": "auth", "token"}`` (a wrong one is closed with 4003), then gets
``{"type": "message", "id", "sender", "pn", "content", "timestamp", "isGroup"}`` frames
and sends ``{"type": "send", "to", "text"}``, answered ``{"type": "sent", "to"}``. It can be
stopped and started again on the same port.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.platforms.base import Handler, LoopbackHTTP

VERSION = "v21.0"
ACCESS_TOKEN = "EAAG-whatsapp-access-token-0123456789"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"
APP_SECRET = "meta-app-secret-5f1e2d3c4b5a"
VERIFY_TOKEN = "verify-me-7c1f"
BRIDGE_TOKEN = "bridge-token-9a8b7c"


class _GraphHandler(Handler):
    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {ACCESS_TOKEN}":
            return True
        self.send_json(401, graph_error(190, "Invalid OAuth access token."))
        return False

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path != f"/{VERSION}/{PHONE_NUMBER_ID}":
            self.send_json(404, graph_error(803, "Some of the aliases you requested do not exist"))
        elif self._authorized():
            self.send_json(200, {"id": PHONE_NUMBER_ID})

    def do_POST(self) -> None:
        raw = self.read_body()
        if urlsplit(self.path).path != f"/{VERSION}/{PHONE_NUMBER_ID}/messages":
            self.send_json(404, graph_error(803, "Unknown path"))
            return
        if not self._authorized():
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_json(400, graph_error(100, "Invalid parameter"))
            return
        if body.get("messaging_product") != "whatsapp" or not body.get("to"):
            self.send_json(400, graph_error(100, "Invalid parameter"))
            return
        self.send_json(*self.fake._answer_send(body))


class GraphAPI(LoopbackHTTP):
    handler = _GraphHandler

    def __init__(self) -> None:
        self.sends: list[dict[str, Any]] = []
        self._failures: deque[tuple[int, int, dict[str, str]]] = deque()
        self._lock = threading.Lock()

    @property
    def api_base(self) -> str:
        return f"{self.url}/{VERSION}"

    def fail_next(self, status: int, code: int, *, retry_after: str | None = None) -> None:
        """The next send is refused with this HTTP status and Graph error code."""
        headers = {"Retry-After": retry_after} if retry_after else {}
        with self._lock:
            self._failures.append((status, code, headers))

    def delivered(self, to: str | None = None) -> list[dict[str, Any]]:
        """The bodies of the sends that were accepted (to one number, if given)."""
        with self._lock:
            return [
                s["body"]
                for s in self.sends
                if s["status"] == 200 and (to is None or s["body"].get("to") == to)
            ]

    def _answer_send(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self._failures:
                status, code, headers = self._failures.popleft()
                self.sends.append({"body": body, "status": status, "code": code,
                                   "at": time.monotonic()})  # fmt: skip
                return status, graph_error(code, f"scripted error {code}"), headers
            self.sends.append({"body": body, "status": 200, "code": None, "at": time.monotonic()})
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
            "messages": [{"id": "wamid." + uuid.uuid4().hex}],
        }
        return 200, answer, {}


def graph_error(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "A" + uuid.uuid4().hex[:22],
        }
    }


# -- the push side --------------------------------------------------------------------------


def text_message(
    sender: str, text: str, *, wamid: str | None = None, quoting: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "from": sender,
        "id": wamid or new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    if quoting:
        message["context"] = {"from": DISPLAY_NUMBER, "id": quoting}
    return message


def new_wamid() -> str:
    return "wamid.HBgL" + uuid.uuid4().hex.upper()


def notification(
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
    }
    if messages:
        value["contacts"] = [
            {"profile": {"name": (names or {}).get(m["from"], "")}, "wa_id": m["from"]}
            for m in messages
        ]
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    change = {"value": value, "field": "messages"}
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [change]}]}


def delivered_status(recipient: str) -> dict[str, Any]:
    return {
        "id": new_wamid(),
        "status": "delivered",
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"},
    }


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    """The headers Meta sends with a notification body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


# -- the bridge -----------------------------------------------------------------------------


class FakeBridge:
    def __init__(self, port: int, token: str = BRIDGE_TOKEN) -> None:
        self.port, self.token = port, token
        self.received: list[dict[str, Any]] = []  # frames clients sent after auth
        self.connections = 0  # authenticated connections so far
        self._clients: set[ServerConnection] = set()
        self._lock = threading.Lock()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> FakeBridge:
        self._server = serve(self._handle, "127.0.0.1", self.port)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Go away as a crashed or restarted bridge does: clients see the connection drop."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for ws in clients:
            ws.close(1001, "bridge restarting")

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def push_message(self, sender: str, text: str, *, message_id: str | None = None) -> str:
        """A WhatsApp message arriving at the bridge, broadcast to its clients."""
        message_id = message_id or uuid.uuid4().hex[:20].upper()
        self._broadcast(
            {
                "type": "message",
                "id": message_id,
                "sender": sender,
                "pn": "",
                "content": text,
                "timestamp": int(time.time()),
                "isGroup": False,
            }
        )
        return message_id

    def push(self, frame: dict[str, Any]) -> None:
        self._broadcast(frame)

    def sends(self, to: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                f
                for f in self.received
                if f.get("type") == "send" and (to is None or f.get("to") == to)
            ]

    def _broadcast(self, frame: dict[str, Any]) -> None:
        with self._lock:
            clients = list(self._clients)
        for ws in clients:
            ws.send(json.dumps(frame))

    def _handle(self, ws: ServerConnection) -> None:
        try:
            first = json.loads(ws.recv(timeout=5))
        except (TimeoutError, ValueError, ConnectionClosed):
            ws.close(4003, "Invalid auth message")
            return
        if first.get("type") != "auth" or first.get("token") != self.token:
            ws.close(4003, "Invalid token")
            return
        with self._lock:
            self._clients.add(ws)
            self.connections += 1
        try:
            for raw in ws:
                frame = json.loads(raw)
                with self._lock:
                    self.received.append(frame)
                ws.send(json.dumps({"type": "sent", "to": frame.get("to")}))
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients.discard(ws)
