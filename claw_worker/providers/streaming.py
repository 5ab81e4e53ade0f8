"""Streamed answers: ``"stream": true`` answered with server-sent events (SSE).

The generic part reads the SSE lines of one POST and hands each ``data:`` payload (with the
name of its ``event:``) to a protocol's ``StreamAccumulator``, which puts the pieces back
together into the same ``LLMResponse`` a non-streamed call returns. HTTP errors are classified
as for a plain POST, a server that ignores ``stream`` and answers JSON is parsed as
non-streamed, and a stream that stops before its terminal event (or reports an error
mid-answer) is a transient, retryable failure: the answer is incomplete, asking again may
succeed.

Chat completions' accumulator lives here; the Responses and Anthropic ones live with their
protocols (responses.py, anthropic.py).

Chat completions: each ``data:`` line is a ``chat.completion.chunk``; content arrives in
pieces, tool calls arrive as deltas keyed by ``index`` (``id`` and ``function.name`` first,
then ``function.arguments`` in pieces), the last chunk before ``data: [DONE]`` may carry the
usage (``stream_options.include_usage``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import httpx

from claw_worker.providers import wire_json
from claw_worker.providers.base import (
    ErrorKind,
    LLMResponse,
    ProviderError,
    ToolCall,
    body_preview,
    build_response,
    provider_error,
    reported_error,
    reported_kind,
)
from claw_worker.providers.http import (
    HttpPool,
    http_error,
    malformed,
    non_json_200,
    transport_error,
)

JsonParser = Callable[[str, Any], LLMResponse]  # a non-streamed body -> LLMResponse
T = TypeVar("T")
# What reading a field of another type than the protocol's raises (a string where an
# object belongs, a list for the usage, ...): the answer is malformed, not our bug to crash on.
_SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def read_shaped(url: str, what: str, data: Any, read: Callable[[], T]) -> T:
    """``read()``, its shape errors raised as a malformed answer (bad_response: the next
    model or proxy is tried) instead of a traceback that skips the failover."""
    try:
        return read()
    except _SHAPE_ERRORS as exc:
        raise malformed(url, what, data, exc) from exc


@dataclass
class CallParts:
    id: str = ""
    name: str = ""
    arguments: str = ""


class StreamAccumulator:
    """The pieces of one streamed answer; a protocol's subclass implements ``on_event``
    (and sets ``done`` on its terminal event, named by ``terminal`` in errors)."""

    terminal = "[DONE]"

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = False
        self.content: list[str] = []
        self.calls: dict[int, CallParts] = {}  # by the protocol's index of the call
        self.finish_reason = ""
        self.usage: dict[str, int] = {}
        self.model = ""
        self.final_event: Any = None  # the last event read, shown when it is malformed

    def feed(self, event: str, data: str) -> None:
        """One ``data:`` payload; ``event`` is the name from its ``event:`` line, if any."""
        if data == "[DONE]":  # chat completions' end (harmless after the other wires' end)
            self.done = True
            return
        try:
            payload = wire_json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ProviderError(
                f"LLM API {self.url} streamed a non-JSON chunk: {body_preview(data)}",
                kind=ErrorKind.TRANSIENT,
            ) from exc
        if isinstance(payload, dict):
            self.final_event = payload
            name = str(payload.get("type") or event)
            read_shaped(
                self.url,
                "a well-formed stream event",
                payload,
                lambda: self.on_event(name, payload),
            )

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def fail(self, detail: Any) -> NoReturn:
        """An error reported mid-stream: transient, asking again may succeed; unless its
        code says otherwise (``rate_limit_exceeded``, a numeric HTTP status, ...) or it is a
        context-length refusal (``response.failed`` with ``context_length_exceeded``), which
        the agent answers by compacting, as for the same refusal as an HTTP 400."""
        text, kind = reported_kind(detail)
        raise provider_error(f"LLM API {self.url} failed mid-stream: {text[:500]}", kind)

    def take_usage(self, usage: Any) -> None:
        """Merge integer counts (Anthropic sends them in two events; zeros do not erase)."""
        if isinstance(usage, dict):
            for key, value in usage.items():
                if isinstance(value, int) and (value or key not in self.usage):
                    self.usage[key] = value

    def result(self) -> LLMResponse:
        calls = [
            ToolCall.parse(parts.id or f"call_{index}", parts.name, parts.arguments)
            for index, parts in sorted(self.calls.items())
        ]
        return build_response(
            "".join(self.content),
            calls,
            text_finish=self.finish_reason,
            usage=self.usage,
            model=self.model,
        )


class ChatAccumulator(StreamAccumulator):
    """Chat completions chunks (no ``event:`` names; the end is ``data: [DONE]``)."""

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        if data.get("error"):  # some proxies report a failure mid-stream as a chunk
            self.fail(data)  # {"error": {"message", "type", "code"}}
        self.model = str(data.get("model") or self.model)
        self.take_usage(data.get("usage"))
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if choice.get("error"):  # OpenRouter: {"finish_reason": "error", "error": {...}}
                self.fail(choice)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            for position, raw in enumerate(delta.get("tool_calls") or []):
                if isinstance(raw, dict):
                    self._tool_delta(position, raw)

    def _tool_delta(self, position: int, raw: dict[str, Any]) -> None:
        index = raw.get("index")
        parts = self.calls.setdefault(index if isinstance(index, int) else position, CallParts())
        if raw.get("id") and not parts.id:
            parts.id = str(raw["id"])
        function = raw.get("function") or {}
        name = function.get("name")
        if isinstance(name, str) and name and name != parts.name:
            parts.name = name if not parts.name else parts.name + name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            parts.arguments += arguments
        elif isinstance(arguments, dict):  # a whole object in one delta
            parts.arguments += json.dumps(arguments, ensure_ascii=False)


def post_answer(
    pool: HttpPool,
    url: str,
    payload: dict[str, Any],
    parse_json: JsonParser,
    stream_with: type[StreamAccumulator] | None = None,
) -> LLMResponse:
    """POST ``payload`` and parse the answer: one JSON body, or, with ``stream_with``, the
    events of a streamed answer put together by that protocol's accumulator."""
    if stream_with is None:
        return parse_answer(url, pool.post_json(url, payload), parse_json)
    return stream_answer(pool, url, {**payload, "stream": True}, stream_with(url), parse_json)


def parse_answer(url: str, data: Any, parse_json: JsonParser) -> LLMResponse:
    """A 200's JSON body as an answer; an error it reports instead (some proxies send a
    failure that arises after they accepted the request with status 200) is raised as that
    error, so a context too long is compacted and a transient failure retried."""
    failure = reported_error(url, data)
    if failure is not None:
        raise failure
    return read_shaped(url, "a well-formed answer", data, lambda: parse_json(url, data))


def stream_answer(
    pool: HttpPool,
    url: str,
    payload: dict[str, Any],
    acc: StreamAccumulator,
    parse_json: JsonParser,
) -> LLMResponse:
    """POST ``payload`` (which asks for ``"stream": true``) and assemble the answer with
    ``acc``. HTTP errors are classified as in ``HttpPool.post_json``; a server that ignores
    ``stream`` and answers plain JSON is parsed with ``parse_json``."""
    headers = {"Accept": "text/event-stream"}
    try:
        with pool.client().stream("POST", url, json=payload, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise http_error(url, response)
            if response.headers.get("content-type", "").startswith("application/json"):
                response.read()
                try:
                    data = wire_json.loads(response.content)
                except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                    raise non_json_200(url, response) from exc
                return parse_answer(url, data, parse_json)
            _read_events(response.iter_lines(), acc)
    except httpx.TransportError as exc:  # includes timeouts
        raise transport_error(url, exc, "stream from") from exc
    if not acc.done:
        raise ProviderError(
            f"LLM stream from {url} ended before {acc.terminal} (connection lost mid-answer)",
            kind=ErrorKind.TRANSIENT,
        )
    return read_shaped(url, "a well-formed answer", acc.final_event, acc.result)


def _read_events(lines: Any, acc: StreamAccumulator) -> None:
    """Feed each ``data:`` line to ``acc`` as it arrives (every wire puts one JSON document
    on one line), until the terminal event."""
    event = ""
    for raw in lines:
        line = raw.strip()
        if not line:
            event = ""  # a blank line ends an event
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            acc.feed(event, line[5:].strip())
            if acc.done:
                return
        # anything else: ": keep-alive" comments, "id:" and "retry:" fields
