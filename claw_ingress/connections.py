"""Connection limits uvicorn does not have: a header deadline, a body backstop and a cap.

uvicorn waits for request headers for ever, counts connections only once a request arrived
and accepts until the process runs out of file descriptors; a flood of clients sending a
few bytes each then starved /health for minutes. :class:`ConnectionGuard` adds, per
connection, with the limits read from the live config:

- the request headers must arrive within ``gateway.header_timeout_sec`` of the connection
  (or of the previous response): then 408 if some bytes came, else a silent close (an idle
  keep-alive connection);
- a request body still arriving ``body_timeout_sec`` (plus a little) after its headers is
  cut off, even when the app answered early (a 413) and the client keeps trickling; the app
  itself answers 408 at ``body_timeout_sec`` (``guards.py``);
- at most ``gateway.max_connections`` open connections: a new one beyond the cap takes the
  place of the connection that has waited longest on its client (sending headers or a
  body, or idle between requests), which is answered 503 and closed; when every
  connection is busy in the app (waiting for a reply), the new one is answered 503. So the
  descriptors in use stay bounded and a slow flood cannot keep /health from answering.

It is a mixin over either of uvicorn's HTTP/1.1 protocols (``protocols.py``), which
differ only in how they tell what the client is sending (:meth:`ConnectionGuard._client_phase`).

Events a flood repeats (refused connections, header timeouts, failed accepts) are logged
at most once per :data:`LOG_EVERY_SEC`, with the count held back.
"""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import time
from collections import Counter
from typing import Any, ClassVar

import structlog

from claw_worker.config.reload import LiveConfig

log = structlog.get_logger(__name__)

BODY_SLACK_SEC = 0.5  # the app's own 408 comes first
DRAIN_SEC = 1.0  # a refused connection reads what the client sends, so it gets the 503
LOG_EVERY_SEC = 5.0
FD_RESERVE = 256  # Redis connections, log files, the listening socket...
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Set in the request's scope when this module closes its connection, so the app does not log
# the disconnect it then sees as the client's doing (it is logged here, throttled).
DROPPED = "claw.dropped"
# Set in the request's scope once the request's whole body has been read off the connection:
# the app's reads of it cannot wait, so they need no deadline (guards.py).
BODY_RECEIVED = "claw.body_received"


class Throttled:
    """Logs each event at most once per ``every`` seconds, counting the ones held back."""

    def __init__(self, every: float = LOG_EVERY_SEC) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(event, -self.every) < self.every:
            self._held[event] += 1
            return
        self._last[event] = now
        held = self._held.pop(event, 0)
        getattr(log, level)(event, **fields, **({"held_back": held} if held else {}))


throttled = Throttled()


def raw_response(status: int, reason: str, error: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


class ConnectionGuard:
    """The deadlines and the cap, mixed into a uvicorn protocol class (which provides
    ``connections``, ``transport``, ``loop``, ``cycle`` and ``scope``); see
    :func:`claw_ingress.protocols.guarded_protocol`."""

    live: ClassVar[LiveConfig]
    draining: ClassVar[set[ConnectionGuard]]  # refused, reading what the client sends
    # Connections waiting on their client (headers, body), the longest waiting first.
    waiting: ClassVar[dict[ConnectionGuard, None]]

    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    scope: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = ""  # headers | body | app | refused
        self._partial = False  # bytes of a request came, its headers are not complete
        self._timer: asyncio.TimerHandle | None = None

    def _client_phase(self) -> tuple[str, bool]:
        """What the client is doing: ``headers`` (sending the next request's headers, or
        idle between requests), ``body`` (sending a body) or ``app`` (waiting for the app),
        and whether bytes of the next request are already in."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        limit = self.live.config.gateway.max_connections
        if len(self.connections) > limit and not self._evict_slowest(limit):
            self._refuse(limit)
        else:
            self._track()

    def data_received(self, data: bytes) -> None:
        if self._phase == "refused":
            return  # read and dropped, so closing does not reset the 503 away
        if self._phase == "headers":
            self._partial = True
        super().data_received(data)  # type: ignore[misc]
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.draining.discard(self)
        self.waiting.pop(self, None)
        super().connection_lost(exc)  # type: ignore[misc]

    def _evict_slowest(self, limit: int) -> bool:
        """Close the connection that has waited longest on its client, if there is one."""
        victim = next(iter(self.waiting), None)
        if victim is None:
            return False
        del self.waiting[victim]
        victim._cancel()
        throttled("warning", "slow connection dropped for a new one", max_connections=limit)
        # Answer it unless it is between requests with nothing of the next one read yet (a
        # keep-alive connection, closed as its idle timeout would) or was answered already.
        answered = victim.cycle is not None and victim.cycle.response_started
        if victim._partial or not answered:
            error = (
                f"the gateway is at its connection limit (gateway.max_connections is {limit}) "
                "and this request was the slowest to arrive; retry"
            )
            victim.transport.write(raw_response(503, "Service Unavailable", error))
        victim._close()
        return True

    def _refuse(self, limit: int) -> None:
        self.connections.discard(self)
        self._phase = "refused"
        throttled("warning", "connection refused: too many connections", max_connections=limit)
        error = f"too many connections (gateway.max_connections is {limit}); retry later"
        self.transport.write(raw_response(503, "Service Unavailable", error))
        if len(self.draining) >= limit or not self.transport.can_write_eof():
            self.transport.close()  # a flood: bound the descriptors first
            return
        self.transport.write_eof()
        self.draining.add(self)
        self._timer = self.loop.call_later(DRAIN_SEC, self.transport.close)

    def _track(self) -> None:
        """Arm the deadline of the phase the connection is in, when that phase changed."""
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            self._cancel()  # closed, or handed over (a WebSocket upgrade)
            self.waiting.pop(self, None)
            return
        gateway = self.live.config.gateway
        phase, partial = self._client_phase()
        if phase == self._phase:
            return
        timeout = {"headers": gateway.header_timeout_sec,
                   "body": gateway.body_timeout_sec + BODY_SLACK_SEC}.get(phase)  # fmt: skip
        self._cancel()
        self._phase, self._partial = phase, partial
        self.waiting.pop(self, None)
        if timeout is not None:  # the client's turn (the app takes as long as it takes)
            self.waiting[self] = None  # the newest to wait goes last
            self._timer = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        gateway = self.live.config.gateway
        if self._phase == "headers" and self._partial:
            timeout = gateway.header_timeout_sec
            throttled("info", "request headers timed out", timeout_sec=timeout)
            error = f"request headers not received within {timeout:g}s"
            self.transport.write(raw_response(408, "Request Timeout", error))
        elif self._phase == "body":
            throttled("info", "request body timed out", timeout_sec=gateway.body_timeout_sec)
        self._close()

    def _close(self) -> None:
        if self.scope is not None:  # a request's app is running: its disconnect is ours
            self.scope[DROPPED] = True
        self.transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def quiet_resource_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of descriptors, asyncio logs a traceback per failed accept; make it one line."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            throttled("warning", "cannot accept connections for now", error=str(exc))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def ensure_fd_budget(max_connections: int, backlog: int) -> None:
    """Raise the open-file limit to what ``max_connections`` needs, if the hard limit allows;
    warn when it cannot (then the cap is not reached before the descriptors run out).

    Per connection: its socket and a Redis connection; plus those draining a 503 (at most
    ``max_connections``) and one accept batch (asyncio accepts up to ``backlog`` sockets
    before any of them is looked at)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * max_connections + backlog + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit", error=str(exc))
    if soft != resource.RLIM_INFINITY and soft < want:
        log.warning(
            "the open-file limit is low for gateway.max_connections",
            limit=soft, max_connections=max_connections, needed=want,
        )  # fmt: skip
