"""Anthropic Messages API (``POST {api_base}/messages``), plain JSON or streamed events.

Differences from chat completions handled here: the system prompt is a separate field,
tool calls are ``tool_use`` content blocks, tool results are ``tool_result`` blocks in a
user message, and roles must alternate (consecutive same-role messages are merged).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from claw_worker.providers import wire_json
from claw_worker.providers.base import (
    LLMResponse,
    Message,
    ToolCall,
    ToolSchema,
    build_response,
)
from claw_worker.providers.http import HttpPool, list_field
from claw_worker.providers.responses import text_of
from claw_worker.providers.streaming import CallParts, StreamAccumulator, post_answer

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _input_of(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as the object ``tool_use.input`` must be."""
    if isinstance(raw, dict):
        return raw
    try:
        value = wire_json.loads(raw or "{}")
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return {}
    return value if isinstance(value, dict) else {}


def to_messages(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system, messages with content blocks) for chat-completions shaped ``messages``."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = text_of(message.get("content"))
        blocks: list[dict[str, Any]] = []
        if role == "system":
            system.append(text)
            continue
        if role == "tool":
            role = "user"
            result = {"type": "tool_result", "tool_use_id": str(message.get("tool_call_id"))}
            blocks.append({**result, "content": text})
        elif role == "assistant":
            if text:
                blocks.append({"type": "text", "text": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": str(call.get("id") or ""),
                        "name": str(function.get("name") or ""),
                        "input": _input_of(function.get("arguments")),
                    }
                )
        else:
            role = "user"
            blocks.append({"type": "text", "text": text})
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)  # the API wants alternating roles
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), out


def to_tools(tools: Sequence[ToolSchema]) -> list[dict[str, Any]]:
    result = []
    for tool in tools:
        function = tool.get("function") or {}
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        result.append(
            {
                "name": function.get("name", ""),
                "description": function.get("description", ""),
                "input_schema": schema,
            }
        )
    return result


class AnthropicProvider:
    def __init__(
        self, api_base: str, api_key: str = "", timeout_sec: float = 120.0, stream: bool = False
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.stream = stream  # ask for streamed events (AnthropicAccumulator) instead of JSON
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._pool = HttpPool(headers, timeout_sec)

    def close(self) -> None:
        self._pool.close()

    def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        model: str,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse:
        system, converted = to_messages(messages)
        payload: dict[str, Any] = {
            "model": model,
            "messages": converted,
            "max_tokens": max_tokens,
            "temperature": min(temperature, 1.0),  # Anthropic accepts 0..1 only
        }
        if system:
            payload["system"] = system
        if tools:
            payload["tools"] = to_tools(tools)
        url = f"{self.api_base}/messages"
        stream_with = AnthropicAccumulator if self.stream else None
        return post_answer(self._pool, url, payload, _parse, stream_with)


def _parse(url: str, data: Any) -> LLMResponse:
    blocks = list_field(url, data, "content", "a message")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            call_id = str(block.get("id") or f"toolu_{len(calls)}")
            calls.append(ToolCall.parse(call_id, str(block.get("name") or ""), block.get("input")))
    return build_response(
        "".join(texts),
        calls,
        text_finish=_finish_of(data.get("stop_reason")),
        usage=data.get("usage"),
        model=data.get("model"),
    )


def _finish_of(stop_reason: Any) -> str:
    stop = str(stop_reason or "")
    return _FINISH.get(stop, stop or "stop")


class AnthropicAccumulator(StreamAccumulator):
    """Anthropic stream events. ``message_start`` holds the model and input usage; each
    content block opens with ``content_block_start`` (a ``tool_use`` block brings its id and
    name) and grows by ``content_block_delta`` (``text_delta`` text or ``input_json_delta``
    pieces of the tool input), keyed by ``index``; ``message_delta`` brings the stop reason
    and output usage; ``message_stop`` ends the answer; ``error`` (e.g. ``overloaded_error``)
    reports a failure mid-answer; ``ping`` is ignored."""

    terminal = "message_stop"

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        index = data.get("index") if isinstance(data.get("index"), int) else 0
        if name == "error":
            self.fail(data)  # {"type": "error", "error": {"type", "message"}}
        elif name == "message_start":
            message = data.get("message") or {}
            self.model = str(message.get("model") or self.model)
            self.take_usage(message.get("usage"))
        elif name == "content_block_start":
            self._block(index, data.get("content_block") or {})
        elif name == "content_block_delta":
            self._delta(index, data.get("delta") or {})
        elif name == "message_delta":
            self.finish_reason = _finish_of((data.get("delta") or {}).get("stop_reason"))
            self.take_usage(data.get("usage"))
        elif name == "message_stop":
            self.done = True

    def _block(self, index: int, block: dict[str, Any]) -> None:
        if block.get("type") == "text":
            self.content.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            parts = self.calls.setdefault(index, CallParts())
            parts.id = str(block.get("id") or f"toolu_{index}")
            parts.name = str(block.get("name") or "")
            if block.get("input"):  # usually {} with the input streamed as deltas
                parts.arguments = json.dumps(block["input"], ensure_ascii=False)

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        if delta.get("type") == "text_delta":
            self.content.append(str(delta.get("text") or ""))
        elif delta.get("type") == "input_json_delta":
            parts = self.calls.setdefault(index, CallParts())
            parts.arguments += str(delta.get("partial_json") or "")
