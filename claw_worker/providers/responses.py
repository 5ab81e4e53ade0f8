"""OpenAI Responses API (``POST {api_base}/responses``), non-streaming.

The agent keeps its history in chat-completions shape; this module translates it into
Responses input items (messages, ``function_call`` and ``function_call_output`` items) and
translates the output items back, so the rest of the agent does not know which wire
protocol a proxy speaks.
"""

from __future__ import annotations

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
from claw_worker.providers.openai_compat import Auth, auth_headers


def text_of(content: Any) -> str:
    """A message's text, whether a string or a list of content parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def to_input(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(instructions, input items) for chat-completions shaped ``messages``."""
    system: list[str] = []
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = text_of(message.get("content"))
        if role == "system":
            system.append(text)
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": str(message.get("tool_call_id") or ""),
                    "output": text,
                }
            )
        elif role == "assistant":
            if text:
                items.append({"role": "assistant", "content": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": str(call.get("id") or ""),
                        "name": str(function.get("name") or ""),
                        "arguments": str(function.get("arguments") or "{}"),
                    }
                )
        else:
            items.append({"role": "user", "content": text})
    return "\n\n".join(s for s in system if s), items


def to_tools(tools: Sequence[ToolSchema]) -> list[dict[str, Any]]:
    """Responses tools are flat: ``{"type": "function", name, description, parameters}``."""
    flat = []
    for tool in tools:
        function = tool.get("function") or {}
        flat.append({"type": "function", **function})
    return flat


class ResponsesProvider:
    def __init__(
        self, api_base: str, api_key: str = "", auth: Auth = "bearer", timeout_sec: float = 120.0
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._pool = HttpPool(auth_headers(api_key, auth), timeout_sec)

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
        instructions, items = to_input(messages)
        payload: dict[str, Any] = {
            "model": model,
            "input": items,
            "max_output_tokens": max_tokens,
            "temperature": temperature,
            "store": False,  # the history lives in Redis; nothing to keep server-side
        }
        if instructions:
            payload["instructions"] = instructions
        if tools:
            payload["tools"] = to_tools(tools)
            payload["tool_choice"] = "auto"
        url = f"{self.api_base}/responses"
        return _parse(url, self._pool.post_json(url, payload))


def _parse(url: str, data: Any) -> LLMResponse:
    try:
        output = data["output"]
        if not isinstance(output, list):
            raise TypeError("output is not a list")
    except (KeyError, TypeError) as exc:
        raise malformed(url, "a response", data, exc) from exc
    texts: list[str] = []
    calls: list[ToolCall] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.append(text_of(item.get("content")))
        elif item.get("type") == "function_call":
            call_id = str(item.get("call_id") or item.get("id") or f"call_{len(calls)}")
            calls.append(
                ToolCall.parse(call_id, str(item.get("name") or ""), item.get("arguments"))
            )
    incomplete = (data.get("incomplete_details") or {}).get("reason")
    return build_response(
        "".join(texts),
        calls,
        text_finish="length" if incomplete == "max_output_tokens" else "stop",
        usage=data.get("usage"),
        model=data.get("model"),
    )
