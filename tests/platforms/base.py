"""What every loopback HTTP server of the tests shares, so that each fake only speaks its
platform: a ``ThreadingHTTPServer`` on a free port of 127.0.0.1, served from a daemon
thread between :meth:`LoopbackHTTP.start` and :meth:`LoopbackHTTP.stop`, and a handler
base that reads a request's body and writes a JSON (or any) answer.

A fake subclasses :class:`LoopbackHTTP` and names its handler class (a subclass of
:class:`Handler`); the handler reaches the fake as ``self.fake``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class Handler(BaseHTTPRequestHandler):
    content_type: ClassVar[str] = "application/json"  # of send_json's answers
    ensure_ascii: ClassVar[bool] = True  # False: send_json writes UTF-8 as it is

    @property
    def fake(self) -> Any:
        """The :class:`LoopbackHTTP` this handler answers for."""
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=self.ensure_ascii).encode()
        self.send_body(status, self.content_type, data, headers)

    def send_body(self, status: int, content_type: str | None, data: bytes,
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
        """Answer ``data`` (no Content-Type header when ``content_type`` is None)."""
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class LoopbackHTTP:
    handler: ClassVar[type[Handler]]
    poll_interval: ClassVar[float] = 0.5  # how soon stop() is noticed
    _httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() it first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> Self:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever,
                         kwargs={"poll_interval": self.poll_interval}, daemon=True).start()  # fmt: skip
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
