"""Streamed chat completions: ``"stream": true`` answered with server-sent events.

Each ``data:`` line is a ``chat.completion.chunk``; content arrives in pieces, tool calls
arrive as deltas keyed by ``index`` (``id`` and ``function.name`` first, then
``function.arguments`` in pieces), the last chunk before ``data: [DONE]`` may carry the
usage (``stream_options.include_usage``). The pieces are put back together into the same
``LLMResponse`` a non-streamed call returns. A stream that stops before ``[DONE]`` is a
transient, retryable failure: the answer is incomplete, asking again may succeed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from claw_worker.providers.base import (
    LLMResponse,
    ProviderError,
    ToolCall,
    body_preview,
    build_response,
)
from claw_worker.providers.http import HttpPool, http_error, non_json_200, transport_error

JsonParser = Callable[[str, Any], LLMResponse]  # a non-streamed body -> LLMResponse


@dataclass
class _CallParts:
    id: str = ""
    name: str = ""
    arguments: str = ""


class StreamAccumulator:
    """The pieces of one streamed answer, fed one SSE line at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = False
        self.content: list[str] = []
        self.calls: dict[int, _CallParts] = {}
        self.finish_reason = ""
        self.usage: dict[str, int] = {}
        self.model = ""

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line.startswith("data:"):
            return  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise ProviderError(
                f"LLM API {self.url} streamed a non-JSON chunk: {body_preview(data)}",
                retryable=True,
                kind="transient",
            ) from exc
        if isinstance(chunk, dict):
            self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        error = chunk.get("error")
        if error:  # some proxies report a failure mid-stream as a chunk
            detail = error.get("message") if isinstance(error, dict) else error
            raise ProviderError(
                f"LLM API {self.url} failed mid-stream: {str(detail)[:500]}",
                retryable=True,
                kind="transient",
            )
        self.model = str(chunk.get("model") or self.model)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k, v in usage.items() if isinstance(v, int)}
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
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
        parts = self.calls.setdefault(index if isinstance(index, int) else position, _CallParts())
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


def stream_chat(
    pool: HttpPool, url: str, payload: dict[str, Any], parse_json: JsonParser
) -> LLMResponse:
    """POST ``payload`` with ``"stream": true`` and assemble the answer. HTTP errors are
    classified as in ``HttpPool.post_json``; a server that ignores ``stream`` and answers
    plain JSON is parsed with ``parse_json``."""
    acc = StreamAccumulator(url)
    try:
        with pool.client().stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                response.read()
                raise http_error(url, response)
            if response.headers.get("content-type", "").startswith("application/json"):
                response.read()
                try:
                    data = response.json()
                except ValueError as exc:
                    raise non_json_200(url, response) from exc
                return parse_json(url, data)
            for line in response.iter_lines():
                acc.feed(line)
                if acc.done:
                    break
    except httpx.TransportError as exc:  # includes timeouts
        raise transport_error(url, exc, "stream from") from exc
    if not acc.done:
        raise ProviderError(
            f"LLM stream from {url} ended before [DONE] (connection lost mid-answer)",
            retryable=True,
            kind="transient",
        )
    return acc.result()
