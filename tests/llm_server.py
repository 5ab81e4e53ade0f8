"""A scripted LLM server on loopback, for tests and benchmarks.

It speaks the real wire formats (tests/llm_wire.py): chat completions (``POST
/v1/chat/completions``), the Responses API (``POST /v1/responses``), Anthropic Messages
(``POST /v1/messages``), each as JSON or, to ``"stream": true``, as server-sent events
(tests/llm_sse.py), and ``GET /v1/models``, so the project's provider code runs unchanged
against it. What it answers is scripted, whatever the protocol:

- ``Script`` entries queued with ``push`` (optionally keyed by a marker: consumed only by
  requests whose last user message contains the marker, so concurrent sessions get
  deterministic replies in order; and/or by ``when_model``: only requests for that model);
- persistent ``rules`` (marker [and model] -> reply, never consumed);
- otherwise the default: ``"echo: <last user message text>"`` after ``default_delay``.

With ``max_context_chars`` set, a request whose conversation is longer (``request_chars``)
is refused first as OpenAI does (``context_length_exceeded``), consuming no scripted answer.

Order of choice per request: keyed queue, global queue, rules, default. Every request body
is recorded. Standalone: ``python -m tests.llm_server --port N [--delay 0.5]``, scripted
through ``/_control/*`` (see ``_ControlAPI``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests import llm_sse
from tests.llm_wire import (
    ROUTES,
    Script,
    answer_body,
    context_too_long,
    error,
    last_user_text,
    raw_answer,
    request_chars,
    script_to_dict,
    text,
    tool_call,
    tool_calls,
    valid_request,
)

# Re-exported: tests script the server through this module.
__all__ = [
    "LLMServer",
    "Script",
    "error",
    "last_user_text",
    "main",
    "raw_answer",
    "script_to_dict",
    "text",
    "tool_call",
    "tool_calls",
]

Key = tuple[str | None, str | None]  # (marker in the last user message, model)


class LLMServer:
    """The scripted server; thread-safe. Start with ``start()``, stop with ``stop()``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_delay: float = 0.0,
        max_recorded: int | None = None,
    ) -> None:
        self.default_delay = default_delay
        self.models = ["test-model", "test-model-mini"]
        self.models_error: Script | None = None  # set: GET /v1/models answers this error
        self.max_context_chars: int | None = None  # set: longer requests are refused
        self._lock = threading.Lock()
        self._queue: deque[Script] = deque()
        self._keyed: dict[Key, deque[Script]] = {}
        self._rules: list[tuple[str, str | None, Script]] = []
        # Bounded in the standalone mode, where a benchmark sends requests for hours.
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._headers: deque[dict[str, str]] = deque(maxlen=max_recorded)
        self._paths: deque[str] = deque(maxlen=max_recorded)
        self.in_flight = 0  # chat requests being answered right now
        self.peak_concurrency = 0  # the most ever answered at once
        self._httpd = _Server((host, port), _Handler)
        self._httpd.llm = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- scripting -------------------------------------------------------------------------
    def push(
        self, *scripts: Script, when: str | None = None, when_model: str | None = None
    ) -> None:
        """Queue answers; with ``when`` only requests whose last user message contains it,
        with ``when_model`` only requests for that model."""
        with self._lock:
            if when is None and when_model is None:
                queue = self._queue
            else:
                queue = self._keyed.setdefault((when, when_model), deque())
            queue.extend(scripts)

    def reply(
        self,
        content: str,
        *,
        when: str | None = None,
        when_model: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.push(text(content, delay=delay), when=when, when_model=when_model)

    def reply_tool_call(
        self,
        name: str,
        arguments: dict[str, Any] | str,
        *,
        when: str | None = None,
        when_model: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.push(tool_call(name, arguments, delay=delay), when=when, when_model=when_model)

    def reply_error(
        self,
        status: int,
        body: str | dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        when: str | None = None,
        when_model: str | None = None,
        delay: float = 0.0,
    ) -> None:
        script = error(status, body, headers=headers, delay=delay)
        self.push(script, when=when, when_model=when_model)

    def add_rule(self, marker: str, script: Script | str, *, when_model: str | None = None) -> None:
        """Every request whose last user message contains ``marker`` (and, with
        ``when_model``, asks for that model) gets ``script``."""
        with self._lock:
            entry = text(script) if isinstance(script, str) else script
            self._rules.append((marker, when_model, entry))

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._keyed.clear()
            self._rules.clear()
            self._requests.clear()
            self._headers.clear()
            self._paths.clear()
            self.peak_concurrency = self.in_flight

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + sum(len(q) for q in self._keyed.values())

    # -- inspection ------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of every chat request body received (any protocol), in arrival order."""
        with self._lock:
            return json.loads(json.dumps(list(self._requests)))

    @property
    def request_paths(self) -> list[str]:
        """The path of each recorded request (which protocol it spoke)."""
        with self._lock:
            return list(self._paths)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(h) for h in self._headers]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": len(self._requests),
                "in_flight": self.in_flight,
                "peak_concurrency": self.peak_concurrency,
                "pending": len(self._queue) + sum(len(q) for q in self._keyed.values()),
            }

    def requests_for(self, marker: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if marker in last_user_text(r)]

    # -- used by the handler ---------------------------------------------------------------
    def _record_and_choose(
        self, body: dict[str, Any], headers: dict[str, str], path: str = "/v1/chat/completions"
    ) -> Script:
        user_text = last_user_text(body)
        model = body.get("model")
        with self._lock:
            self._requests.append(body)
            self._headers.append(headers)
            self._paths.append(path)
            self.in_flight += 1
            self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
            limit = self.max_context_chars
            if limit is not None and request_chars(body) > limit:
                return context_too_long(request_chars(body), limit)
            for (marker, for_model), queue in self._keyed.items():
                if queue and _matches(marker, for_model, user_text, model):
                    return queue.popleft()
            if self._queue:
                return self._queue.popleft()
            for marker, for_model, script in self._rules:
                if _matches(marker, for_model, user_text, model):
                    return script
        return Script(text=f"echo: {user_text}", delay=self.default_delay)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _matches(marker: str | None, for_model: str | None, user_text: str, model: Any) -> bool:
    return (marker is None or marker in user_text) and (for_model is None or for_model == model)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the benchmark opens hundreds of connections at once
    llm: LLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client giving up mid-answer (a timeout under test) is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in two sends; with Nagle on, each reused connection waits
    # for a delayed ACK (~40 ms per call).
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can pool connections
    timeout = 300  # an idle pooled connection frees its thread eventually
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # the standalone mode is silent
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        failure = self.server.llm.models_error
        if path == "/v1/models" and failure is not None:
            self._send(failure.status, failure.body.encode(), failure.content_type, failure.headers)
        elif path == "/v1/models":
            models = [
                {"id": m, "object": "model", "created": 0, "owned_by": "test"}
                for m in self.server.llm.models
            ]
            self._json(200, {"object": "list", "data": models})
        elif path == "/_control/requests":
            self._json(200, {"requests": self.server.llm.requests})
        elif path == "/_control/stats":
            self._json(200, self.server.llm.stats())
        elif path == "/health":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if path.startswith("/_control/"):
            _ControlAPI.handle(self, path.removeprefix("/_control/"), body)
            return
        protocol = ROUTES.get(path)
        if protocol is None:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        problem = valid_request(protocol, body)
        if problem is not None:
            self._json(400, {"error": {"message": problem, "type": "invalid_request_error"}})
            return
        llm = self.server.llm
        headers = {k.lower(): v for k, v in self.headers.items()}
        script = llm._record_and_choose(body, headers, path)
        try:
            self._answer(protocol, body, script)
        finally:
            llm._done()

    def _answer(self, protocol: str, body: dict[str, Any], script: Script) -> None:
        if script.delay > 0:
            time.sleep(script.delay)
        if script.disconnect:
            self.close_connection = True
            return
        if script.status != 200 or script.body:
            self._send(script.status, script.body.encode(), script.content_type, script.headers)
        elif body.get("stream") and not script.ignore_stream:
            self._stream(protocol, body, script)
        else:
            self._json(200, answer_body(protocol, body, script))

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", {})

    def _send(self, status: int, payload: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, protocol: str, body: dict[str, Any], script: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # SSE without a length ends with the socket
        self.end_headers()
        self.close_connection = True
        frames = llm_sse.frames(protocol, body, script)  # the terminal event last
        if script.stream_error is not None:  # fails half-way through, instead of the rest
            half = max(1, (len(frames) - 1) // 2)
            frames = [*frames[:half], llm_sse.error_frame(protocol, script.stream_error)]
        for sent, frame in enumerate(frames):
            if script.drop_after is not None and sent >= script.drop_after:
                return  # a connection lost mid-answer: no terminal event
            if script.chunk_delay > 0:
                time.sleep(script.chunk_delay)
            self.wfile.write(frame.encode())
            self.wfile.flush()


class _ControlAPI:
    """Scripting a server in another process: ``POST /_control/<op>`` with a JSON body.

    ``push`` {"scripts": [Script fields...], "when": marker?, "when_model": model?};
    ``rule`` {"marker", "script", "when_model"?};
    ``delay`` {"seconds"}; ``reset`` {}. ``GET /_control/requests`` lists the bodies,
    ``GET /_control/stats`` counts them (and the peak concurrency).
    """

    @staticmethod
    def handle(handler: _Handler, op: str, body: Any) -> None:
        llm = handler.server.llm
        body = body if isinstance(body, dict) else {}
        try:
            if op == "push":
                scripts = (Script.from_dict(s) for s in body["scripts"])
                llm.push(*scripts, when=body.get("when"), when_model=body.get("when_model"))
            elif op == "rule":
                script = Script.from_dict(body["script"])
                llm.add_rule(body["marker"], script, when_model=body.get("when_model"))
            elif op == "delay":
                llm.default_delay = float(body["seconds"])
            elif op == "reset":
                llm.reset()
            else:
                handler._json(404, {"error": {"message": f"unknown control op {op}"}})
                return
        except (KeyError, TypeError, ValueError) as exc:
            handler._json(400, {"error": {"message": f"bad control request: {exc!r}"}})
            return
        handler._json(200, {"ok": True})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="default answer delay (s)")
    args = parser.parse_args(argv)
    server = LLMServer(
        host=args.host, port=args.port, default_delay=args.delay, max_recorded=10_000
    )

    def on_term(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return, so call it from another thread.
        threading.Thread(target=server._httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    server.serve_forever()
    server._httpd.server_close()


if __name__ == "__main__":
    main()
