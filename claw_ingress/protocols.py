"""uvicorn's two HTTP/1.1 protocols with the connection guard (``connections.py``).

:class:`GuardedHttpToolsProtocol` (httptools, llhttp's C parser: the default) and
:class:`GuardedH11Protocol` (h11, pure Python: ``claw-ingress --http h11``) differ only in
how they tell what the client is sending. h11 refuses a request head (request line and
headers) over 16 KiB; httptools' parser has no such bound, so the httptools protocol counts
the head itself and answers 431 past :data:`MAX_HEAD_BYTES`.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from claw_ingress.connections import BODY_RECEIVED, ConnectionGuard, raw_response, throttled
from claw_worker.config.reload import LiveConfig

MAX_HEAD_BYTES = 16 * 1024  # h11's default bound on an incomplete event, the head included


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over MAX_HEAD_BYTES."""


class GuardedHttpToolsProtocol(ConnectionGuard, HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard, and a bound on the request head.

    httptools parses whatever arrives, pipelined requests included (uvicorn queues those
    and stops reading until the one before is answered); the parser's callbacks say where
    the newest request is: ``idle`` (none begun), ``headers``, ``body`` or ``done``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsing = "idle"
        # Two lower bounds of the size of the head being parsed, so neither can refuse a
        # head within the bound: what the parser handed over (the URL and complete header
        # lines; it keeps a partial line to itself), and the reads that came after the one
        # it began in while it stayed incomplete (all of their bytes are the head's).
        self._head_seen = self._head_pending = 0
        self._head_ended = False  # a head was completed by the data being fed
        self._head_too_large = False

    def _client_phase(self) -> tuple[str, bool]:
        if self.pipeline:  # requests queued behind the one in the app; reading paused
            return "app", False
        if self._parsing == "body":
            return "body", False
        if self.cycle is not None and not self.cycle.response_complete:
            return "app", False
        return "headers", self._parsing == "headers"

    def data_received(self, data: bytes) -> None:
        under_way = self._parsing == "headers"
        self._head_ended = False
        super().data_received(data)
        if under_way and self._parsing == "headers" and not self._head_ended:
            self._head_pending += len(data)
            if self._head_pending > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._head_too_large = True
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        throttled("info", "request headers too large", max_bytes=MAX_HEAD_BYTES)
        error = f"request headers larger than {MAX_HEAD_BYTES} bytes"
        self.transport.write(raw_response(431, "Request Header Fields Too Large", error))
        self._close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsing, self._head_seen, self._head_pending = "headers", 0, 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._parsing, self._head_ended = "body", True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._parsing = "done"
        self.scope[BODY_RECEIVED] = True

    def _count_head(self, size: int) -> None:
        self._head_seen += size
        if self._head_seen > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge  # the parser stops; uvicorn calls send_400_response


class GuardedH11Protocol(ConnectionGuard, H11Protocol):
    """uvicorn's h11 protocol with the guard (h11 bounds the request head itself)."""

    def _client_phase(self) -> tuple[str, bool]:
        state = self.conn.their_state
        # Bytes of the next request may already be buffered (pipelined behind the last).
        partial = bool(self.conn.trailing_data[0])
        if state is h11.IDLE:  # waiting for (the rest of) the next request's headers
            return "headers", partial
        if state is h11.SEND_BODY:
            return "body", partial
        return "app", partial  # the request is in; the app takes as long as it takes


PROTOCOLS: dict[str, type[ConnectionGuard]] = {
    "httptools": GuardedHttpToolsProtocol,
    "h11": GuardedH11Protocol,
}


def guarded_protocol(live: LiveConfig, http: str = "httptools") -> type[ConnectionGuard]:
    """The protocol class to give ``uvicorn.run(http=...)``, reading limits from ``live``."""
    shared = {"live": live, "draining": set(), "waiting": {}}
    return type("GatewayProtocol", (PROTOCOLS[http],), shared)
