"""A loopback web server for the web tools: Brave- and SearXNG-shaped search APIs, HTML pages,
error statuses, and slow endpoints that record when each request ran.

Routes:
  /brave/res/v1/web/search?q=...   Brave Search API JSON (needs ``X-Subscription-Token``)
  /searx/search?q=...&format=json  SearXNG JSON
  /redirect?to=<url>               302 to <url>
  /slow/<id>[/search]              sleeps ``slow_sec``, records (id, start, end); JSON when
                                   the path ends in /search (so SearXNG can point at it)
  any path in ``pages``            (status, content type, body), with the path's
                                   ``page_headers`` (e.g. Content-Encoding) if any
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.platforms.base import Handler, LoopbackHTTP

BRAVE_KEY = "brave-test-key"


@dataclass
class Interval:
    name: str
    start: float
    end: float


class _Handler(Handler):
    protocol_version = "HTTP/1.1"

    @property
    def web(self) -> WebServer:
        return self.fake

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.web._lock:
            self.web.requests.append(
                {"path": parts.path, "query": query, "headers": dict(self.headers)}
            )
        if parts.path == "/brave/res/v1/web/search":
            if self.headers.get("X-Subscription-Token") != BRAVE_KEY:
                self.send_body(401, "application/json", b'{"error": "bad token"}')
                return
            results = [
                {
                    "title": f"<strong>{query['q']}</strong> result {n}",
                    "url": f"https://example.com/{n}",
                    "description": f"about {query['q']} #{n}",
                }
                for n in range(1, int(query.get("count", "5")) + 1)
            ]
            self.send_json(200, {"type": "search", "web": {"results": results}})
        elif parts.path == "/searx/search" and query.get("format") == "json":
            self.send_json(
                200,
                {
                    "query": query["q"],
                    "results": [
                        {"title": "SearX one", "url": "https://one.example", "content": "first"},
                        {"title": "SearX two", "url": "https://two.example", "content": "second"},
                    ],
                },
            )
        elif parts.path == "/redirect":
            self.send_body(302, None, b"", {"Location": query["to"]})
        elif parts.path.startswith("/slow/"):
            self._slow(parts.path)
        elif parts.path in self.web.pages:
            status, ctype, body = self.web.pages[parts.path]
            self.send_body(status, ctype, body, self.web.page_headers.get(parts.path))
        else:
            self.send_body(404, "text/plain", b"not found")

    def _slow(self, path: str) -> None:
        name = path.split("/")[2]
        with self.web._lock:
            self.web._in_flight += 1
            self.web.max_in_flight = max(self.web.max_in_flight, self.web._in_flight)
        start = time.monotonic()
        time.sleep(self.web.slow_sec)  # the point of this endpoint: a request that takes time
        end = time.monotonic()
        with self.web._lock:
            self.web._in_flight -= 1
            self.web.intervals.append(Interval(name, start, end))
        if path.endswith("/search"):
            self.send_json(200, {"results": [{"title": name, "url": f"https://{name}.example"}]})
        else:
            self.send_body(200, "text/plain", f"slow {name}".encode())


@dataclass
class WebServer(LoopbackHTTP):
    handler = _Handler
    pages: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    page_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # e.g. encodings
    slow_sec: float = 0.5
    intervals: list[Interval] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def interval(self, name: str) -> Interval:
        return next(i for i in self.intervals if i.name == name)
