"""The node's side of the gateway: registering, renewing, and the relay WebSocket.

:class:`Lease` registers (``POST /nodes/register``), then renews every third of the TTL
(``POST /nodes/heartbeat``); a heartbeat answered 404 (the registry forgot the node: Redis
was flushed, or it was offline for a week) registers again. Failures are retried with a
backoff and logged once per kind, never with a token.

:class:`RelayLink` (``--relay``) keeps ``GET /nodes/connect`` open with the gateway's token
and the node's id and token, answers each ``request`` frame in a thread of its own
(``NodeAPI.answer`` with the token the relay attached) and reconnects with a backoff.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from claw_node.server import NodeAPI
from claw_node.settings import Settings

log = logging.getLogger("claw_node")

BACKOFF_MAX_SEC = 30.0
HTTP_TIMEOUT_SEC = 10.0
RELAY_WORKERS = 16


class RegistrationError(Exception):
    """The gateway refused the registration for a reason retrying will not fix."""


class Lease:
    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.s = settings
        self.stop = stop
        headers = (
            {"Authorization": f"Bearer {settings.gateway_token}"} if settings.gateway_token else {}
        )
        self.http = httpx.Client(base_url=settings.gateway, headers=headers,
                                 timeout=HTTP_TIMEOUT_SEC, trust_env=False)  # fmt: skip
        self.registered = threading.Event()

    def register(self) -> None:
        """One registration; RegistrationError for a refusal, httpx.HTTPError to retry."""
        s = self.s
        body = {"id": s.node_id, "name": s.name, "url": s.advertise,
                "capabilities": list(s.capabilities), "token": s.node_token, "ttl_sec": s.ttl_sec}  # fmt: skip
        response = self.http.post("/nodes/register", json=body)
        if response.status_code in (401, 403, 409, 422):
            raise RegistrationError(f"the gateway refused the registration (HTTP "
                                    f"{response.status_code}): {_error(response)}")  # fmt: skip
        response.raise_for_status()
        self.registered.set()

    def keep(self) -> None:
        """Renew until stopped (a thread's target)."""
        backoff = 1.0
        last_problem = ""
        while not self.stop.wait(self.s.ttl_sec / 3 if self.registered.is_set() else backoff):
            try:
                if self.registered.is_set():
                    self._renew()
                else:
                    self.register()
                    log.info("registered again with %s", self.s.gateway)
                backoff, last_problem = 1.0, ""
            except (httpx.HTTPError, RegistrationError) as exc:
                problem = str(exc) or type(exc).__name__
                if problem != last_problem:
                    log.warning("gateway: %s (retrying)", problem)
                last_problem = problem
                backoff = min(BACKOFF_MAX_SEC, backoff * 2)

    def _renew(self) -> None:
        response = self.http.post("/nodes/heartbeat", json={"id": self.s.node_id})
        if response.status_code == 404:
            self.registered.clear()
            self.register()
            return
        if response.status_code == 401:
            raise RegistrationError("the gateway refused the heartbeat: wrong gateway token")
        response.raise_for_status()

    def close(self) -> None:
        self.http.close()


class RelayLink:
    def __init__(self, settings: Settings, api: NodeAPI, stop: threading.Event) -> None:
        self.s = settings
        self.api = api
        self.stop = stop
        self.pool = ThreadPoolExecutor(RELAY_WORKERS, thread_name_prefix="relay")
        self.conn: ClientConnection | None = None
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return "ws" + self.s.gateway.removeprefix("http") + "/nodes/connect"

    def keep(self) -> None:
        """Stay connected until stopped (a thread's target)."""
        backoff = 1.0
        headers = {"X-Node-Id": self.s.node_id, "X-Node-Token": self.s.node_token}
        if self.s.gateway_token:
            headers["Authorization"] = f"Bearer {self.s.gateway_token}"
        while not self.stop.is_set():
            try:
                with connect(self.url, additional_headers=headers, open_timeout=HTTP_TIMEOUT_SEC,
                             max_size=16 * 1024 * 1024) as conn:  # fmt: skip
                    self.conn = conn
                    log.info("relay connected to %s", self.s.gateway)
                    backoff = 1.0
                    for message in conn:
                        self._take(conn, message)
                    reason = conn.close_reason or "closed"
            except (OSError, WebSocketException, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            self.conn = None
            if self.stop.is_set():
                return
            log.warning("relay: %s (reconnecting in %.0fs)", reason, backoff)
            self.stop.wait(backoff)
            backoff = min(BACKOFF_MAX_SEC, backoff * 2)

    def _take(self, conn: ClientConnection, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            return
        if isinstance(frame, dict) and frame.get("type") == "request":
            self.pool.submit(self._answer, conn, frame)

    def _answer(self, conn: ClientConnection, frame: dict[str, Any]) -> None:
        _status, body = self.api.answer(str(frame.get("path")), str(frame.get("token") or ""),
                                        frame.get("body"))  # fmt: skip
        reply = json.dumps({"type": "response", "id": frame.get("id"), "body": body})
        try:
            with self.lock:
                conn.send(reply)
        except (OSError, WebSocketException) as exc:
            log.warning("relay: answer not sent: %s", exc)

    def close(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _error(response: httpx.Response) -> str:
    try:
        data = response.json()
        return str(data.get("error")) + (f" {data['detail']}" if "detail" in data else "")
    except (ValueError, AttributeError):
        return response.text[:200]
