"""OpenAI-compatible chat completions (``POST {api_base}/chat/completions``) over httpx.

Connections are kept alive and reused per thread (see ``http.HttpPool``), so a call does
not pay a TCP (and TLS) handshake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from claw_worker.providers.base import (
    LLMResponse,
    Message,
    ToolCall,
    ToolSchema,
    build_response,
    reported_error,
    without_compaction,
)
from claw_worker.providers.http import HttpPool, malformed
from claw_worker.providers.streaming import ChatAccumulator, post_answer

Auth = Literal["bearer", "api-key", "none"]


def auth_headers(api_key: str, auth: Auth) -> dict[str, str]:
    if api_key and auth == "bearer":
        return {"Authorization": f"Bearer {api_key}"}
    if api_key and auth == "api-key":
        return {"api-key": api_key}
    return {}


class OpenAIStyleClient:
    """What OpenAI's wires share (chat completions here, Responses in responses.py): the
    base URL, the key as a bearer or ``api-key`` header, keep-alive connections."""

    def __init__(
        self,
        api_base: str,
        api_key: str = "",
        auth: Auth = "bearer",
        timeout_sec: float = 120.0,
        stream: bool = False,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.stream = stream  # ask for SSE events (see streaming.py) instead of one JSON body
        self._pool = HttpPool(auth_headers(api_key, auth), timeout_sec)

    def close(self) -> None:
        self._pool.close()


class OpenAICompatProvider(OpenAIStyleClient):
    def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        model: str,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse:
        payload: dict[str, Any] = {
            "model": model,
            "messages": without_compaction(messages),  # plain chat messages only
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if tools:
            payload["tools"] = list(tools)
            payload["tool_choice"] = "auto"
        if self.stream:
            payload["stream_options"] = {"include_usage": True}
        url = f"{self.api_base}/chat/completions"
        stream_with = ChatAccumulator if self.stream else None
        return post_answer(self._pool, url, payload, _parse, stream_with)


def _parse(url: str, data: Any) -> LLMResponse:
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise malformed(url, "a chat completion", data, exc) from exc
    failure = reported_error(url, choice)  # OpenRouter: {"finish_reason": "error", "error"}
    if failure is not None:
        raise failure
    calls = []
    for index, raw in enumerate(message.get("tool_calls") or []):
        function = raw.get("function") or {}
        calls.append(
            ToolCall.parse(
                str(raw.get("id") or f"call_{index}"),
                str(function.get("name") or ""),
                function.get("arguments"),
            )
        )
    return build_response(
        _content_text(message.get("content")),
        calls,
        text_finish=str(choice.get("finish_reason") or ""),
        usage=data.get("usage"),
        model=data.get("model"),
    )


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts, as some proxies answer
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""
