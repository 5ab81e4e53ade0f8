"""A scripted OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

It speaks the real wire format (``POST /v1/chat/completions``, JSON or SSE with
``"stream": true``; ``GET /v1/models``), so the project's provider code runs unchanged
against it. What it answers is scripted:

- ``Script`` entries queued with ``push`` (optionally keyed by a marker: consumed only by
  requests whose last user message contains the marker, so concurrent sessions get
  deterministic replies in order);
- persistent ``rules`` (marker -> reply, never consumed);
- otherwise the default: ``"echo: <last user message text>"`` after ``default_delay``.

Order of choice per request: keyed queue (first marker that matches), global queue, rules,
default. Every request body is recorded. Standalone: ``python -m tests.llm_server --port N
[--delay 0.5]``; scripting a standalone server goes through ``/_control/*`` (see
``_ControlAPI``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Script:
    """One scripted answer. ``status`` other than 200 makes it an HTTP error with ``body``."""

    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {id?, name, arguments}
    status: int = 200
    body: str = ""  # the error body, sent verbatim (JSON or HTML)
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False  # close the connection without answering
    finish_reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Script:
        return cls(**data)


def text(content: str, *, delay: float = 0.0) -> Script:
    return Script(text=content, delay=delay)


def tool_call(name: str, arguments: dict[str, Any] | str, *, delay: float = 0.0) -> Script:
    """A reply asking for one tool; ``arguments`` as a str is sent verbatim (even if invalid)."""
    return tool_calls([(name, arguments)], delay=delay)


def tool_calls(calls: list[tuple[str, dict[str, Any] | str]], *, delay: float = 0.0) -> Script:
    return Script(tool_calls=[{"name": n, "arguments": a} for n, a in calls], delay=delay)


def error(
    status: int,
    body: str | dict[str, Any] | None = None,
    *,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
    delay: float = 0.0,
) -> Script:
    """An HTTP error; a dict or None body becomes OpenAI's JSON error shape."""
    if body is None:
        body = {"error": {"message": f"scripted error {status}", "type": "server_error"}}
    if isinstance(body, dict):
        raw, ctype = json.dumps(body), content_type or "application/json"
    else:
        raw = body
        ctype = content_type or ("text/html" if body.lstrip().startswith("<") else "text/plain")
    return Script(status=status, body=raw, content_type=ctype, headers=headers or {}, delay=delay)


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


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
        self._lock = threading.Lock()
        self._queue: deque[Script] = deque()
        self._keyed: dict[str, deque[Script]] = {}
        self._rules: list[tuple[str, Script]] = []
        # Bounded in the standalone mode, where a benchmark sends requests for hours.
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._headers: deque[dict[str, str]] = deque(maxlen=max_recorded)
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
    def push(self, *scripts: Script, when: str | None = None) -> None:
        """Queue answers; with ``when`` only requests whose last user message contains it."""
        with self._lock:
            queue = self._queue if when is None else self._keyed.setdefault(when, deque())
            queue.extend(scripts)

    def reply(self, content: str, *, when: str | None = None, delay: float = 0.0) -> None:
        self.push(text(content, delay=delay), when=when)

    def reply_tool_call(
        self,
        name: str,
        arguments: dict[str, Any] | str,
        *,
        when: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.push(tool_call(name, arguments, delay=delay), when=when)

    def reply_error(
        self,
        status: int,
        body: str | dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        when: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.push(error(status, body, headers=headers, delay=delay), when=when)

    def add_rule(self, marker: str, script: Script | str) -> None:
        """Every request whose last user message contains ``marker`` gets ``script``."""
        with self._lock:
            self._rules.append((marker, text(script) if isinstance(script, str) else script))

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._keyed.clear()
            self._rules.clear()
            self._requests.clear()
            self._headers.clear()
            self.peak_concurrency = self.in_flight

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + sum(len(q) for q in self._keyed.values())

    # -- inspection ------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of every chat-completions request body received, in arrival order."""
        with self._lock:
            return json.loads(json.dumps(list(self._requests)))

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
    def _record_and_choose(self, body: dict[str, Any], headers: dict[str, str]) -> Script:
        user_text = last_user_text(body)
        with self._lock:
            self._requests.append(body)
            self._headers.append(headers)
            self.in_flight += 1
            self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
            for marker, queue in self._keyed.items():
                if queue and marker in user_text:
                    return queue.popleft()
            if self._queue:
                return self._queue.popleft()
            for marker, script in self._rules:
                if marker in user_text:
                    return script
        return Script(text=f"echo: {user_text}", delay=self.default_delay)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1


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
        if path == "/v1/models":
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
        if path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            msg = "request body must be a JSON object with a 'messages' list"
            self._json(400, {"error": {"message": msg, "type": "invalid_request_error"}})
            return
        llm = self.server.llm
        script = llm._record_and_choose(body, {k.lower(): v for k, v in self.headers.items()})
        try:
            self._answer(body, script)
        finally:
            llm._done()

    def _answer(self, body: dict[str, Any], script: Script) -> None:
        if script.delay > 0:
            time.sleep(script.delay)
        if script.disconnect:
            self.close_connection = True
            return
        if script.status != 200:
            self._send(script.status, script.body.encode(), script.content_type, script.headers)
        elif body.get("stream"):
            self._stream(body, script)
        else:
            self._json(200, _completion(body, script))

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

    def _stream(self, body: dict[str, Any], script: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # SSE without a length ends with the socket
        self.end_headers()
        self.close_connection = True
        for chunk in _chunks(body, script):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class _ControlAPI:
    """Scripting a server in another process: ``POST /_control/<op>`` with a JSON body.

    ``push`` {"scripts": [Script fields...], "when": marker?}; ``rule`` {"marker", "script"};
    ``delay`` {"seconds"}; ``reset`` {}. ``GET /_control/requests`` lists the bodies,
    ``GET /_control/stats`` counts them (and the peak concurrency).
    """

    @staticmethod
    def handle(handler: _Handler, op: str, body: Any) -> None:
        llm = handler.server.llm
        body = body if isinstance(body, dict) else {}
        try:
            if op == "push":
                llm.push(*(Script.from_dict(s) for s in body["scripts"]), when=body.get("when"))
            elif op == "rule":
                llm.add_rule(body["marker"], Script.from_dict(body["script"]))
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


def _wire_tool_calls(script: Script) -> list[dict[str, Any]]:
    calls = []
    for call in script.tool_calls:
        args = call["arguments"]
        calls.append(
            {
                "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    return calls


def _usage(body: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = sum(len(json.dumps(m)) for m in body.get("messages", [])) // 4
    done = max(1, len(completion) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _head(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model") or "test-model",
        "system_fingerprint": "fp_test",
    }


def _finish(script: Script) -> str:
    return script.finish_reason or ("tool_calls" if script.tool_calls else "stop")


def _completion(body: dict[str, Any], script: Script) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text, "refusal": None}
    calls = _wire_tool_calls(script)
    if calls:
        message["tool_calls"] = calls
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(script)}
    usage = _usage(body, (script.text or "") + json.dumps(calls))
    return {**_head(body, "chat.completion"), "choices": [choice], "usage": usage}


def _chunks(body: dict[str, Any], script: Script) -> list[dict[str, Any]]:
    head = _head(body, "chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    out = [chunk({"role": "assistant", "content": ""})]
    content = script.text or ""
    for start in range(0, len(content), 8):  # several deltas, as real servers send
        out.append(chunk({"content": content[start : start + 8]}))
    for index, call in enumerate(_wire_tool_calls(script)):
        fn, args = call["function"], call["function"]["arguments"]
        first = {"index": index, "id": call["id"], "type": "function"}
        out.append(
            chunk({"tool_calls": [{**first, "function": {"name": fn["name"], "arguments": ""}}]})
        )
        for start in range(0, len(args), 16):
            piece = {"index": index, "function": {"arguments": args[start : start + 16]}}
            out.append(chunk({"tool_calls": [piece]}))
    out.append(chunk({}, _finish(script)))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append({**head, "choices": [], "usage": _usage(body, content)})
    return out


def script_to_dict(script: Script) -> dict[str, Any]:
    """The JSON form ``/_control/push`` accepts."""
    return asdict(script)


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
