"""Anthropic Messages API (``POST {api_base}/messages``), non-streaming.

Differences from chat completions handled here: the system prompt is a separate field,
tool calls are ``tool_use`` content blocks, tool results are ``tool_result`` blocks in a
user message, and roles must alternate (consecutive same-role messages are merged).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from claw_worker.providers.base import (
    LLMResponse,
    Message,
    ToolCall,
    ToolSchema,
    build_response,
)
from claw_worker.providers.http import HttpPool, malformed
from claw_worker.providers.responses import text_of

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _input_of(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as the object ``tool_use.input`` must be."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
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
    def __init__(self, api_base: str, api_key: str = "", timeout_sec: float = 120.0) -> None:
        self.api_base = api_base.rstrip("/")
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
        return _parse(url, self._pool.post_json(url, payload))


def _parse(url: str, data: Any) -> LLMResponse:
    try:
        blocks = data["content"]
        if not isinstance(blocks, list):
            raise TypeError("content is not a list")
    except (KeyError, TypeError) as exc:
        raise malformed(url, "a message", data, exc) from exc
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
    stop = str(data.get("stop_reason") or "")
    return build_response(
        "".join(texts),
        calls,
        text_finish=_FINISH.get(stop, stop or "stop"),
        usage=data.get("usage"),
        model=data.get("model"),
    )
