"""OpenAI Responses API (``POST {api_base}/responses``), plain JSON or streamed events, and
its compaction endpoint (``POST {api_base}/responses/compact``).

The agent keeps its history in chat-completions shape; this module translates it into
Responses input items (messages, ``function_call`` and ``function_call_output`` items) and
translates the output items back, so the rest of the agent does not know which wire
protocol a proxy speaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from claw_worker.providers.base import (
    COMPACTION,
    ErrorKind,
    LLMResponse,
    Message,
    ProviderError,
    ToolCall,
    ToolSchema,
    build_response,
    without_compaction,
)
from claw_worker.providers.http import list_field, malformed
from claw_worker.providers.openai_compat import OpenAIStyleClient
from claw_worker.providers.streaming import CallParts, StreamAccumulator, post_answer

log = structlog.get_logger(__name__)


def text_of(content: Any) -> str:
    """A message's text, whether a string or a list of content parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def to_input(messages: Sequence[Message], origin: str) -> tuple[str, list[dict[str, Any]]]:
    """(instructions, input items) for chat-completions shaped ``messages``; native
    compaction items are included when ``origin`` (this provider's api_base) made them."""
    system: list[str] = []
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = text_of(message.get("content"))
        if role == "system":
            system.append(text)
            # A native compaction's items stand in for the older conversation (base.py);
            # another endpoint's encrypted content means nothing here.
            native = message.get(COMPACTION)
            if isinstance(native, dict) and native.get("proxy") == origin:
                items.extend(i for i in native.get("items") or [] if isinstance(i, dict))
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


class ResponsesProvider(OpenAIStyleClient):
    def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        model: str,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse:
        def send(messages: Sequence[Message]) -> LLMResponse:
            instructions, items = to_input(messages, self.api_base)
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
            stream_with = ResponsesAccumulator if self.stream else None
            return post_answer(self._pool, url, payload, _parse, stream_with)

        try:
            return send(messages)
        except ProviderError as exc:
            carried = any(COMPACTION in m for m in messages)
            if exc.kind is not ErrorKind.INVALID_REQUEST or not carried:
                raise
            # A refused request carrying a compaction item: the item may no longer be
            # readable here (a key of another organisation, an expired item). Without it the
            # turn still has the summary text and the recent messages: better than a
            # session that fails on every message.
            log.warning("responses_compaction_item_refused", error=str(exc)[:300])
            return send(without_compaction(messages))

    def compact(self, messages: Sequence[Message], model: str) -> dict[str, Any]:
        """``POST {api_base}/responses/compact``: the output items (the conversation's user
        messages and one opaque ``compaction`` item) that stand in for ``messages`` from
        now on, as the value of the summary's ``COMPACTION`` key (tagged with this
        endpoint, the only one that can read them; see ``to_input``)."""
        instructions, items = to_input(messages, self.api_base)
        payload: dict[str, Any] = {"model": model, "input": items}
        if instructions:
            payload["instructions"] = instructions
        url = f"{self.api_base}/responses/compact"
        data = self._pool.post_json(url, payload)
        output = [
            item
            for item in list_field(url, data, "output", "a compaction")
            if isinstance(item, dict)
        ]
        if not any(
            item.get("type") == "compaction" and isinstance(item.get("encrypted_content"), str)
            for item in output
        ):
            raise malformed(url, "a compaction", data, ValueError("no compaction item"))
        return {"proxy": self.api_base, "items": output}


def _parse(url: str, data: Any) -> LLMResponse:
    output = list_field(url, data, "output", "a response")
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
    return build_response(
        "".join(texts),
        calls,
        text_finish=_finish_of(data),
        usage=data.get("usage"),
        model=data.get("model"),
    )


def _finish_of(data: dict[str, Any]) -> str:
    incomplete = (data.get("incomplete_details") or {}).get("reason")
    return "length" if incomplete == "max_output_tokens" else "stop"


class ResponsesAccumulator(StreamAccumulator):
    """Responses API events. Text (``response.output_text.delta``) and function-call
    arguments (``response.function_call_arguments.delta``) arrive in pieces keyed by
    ``output_index``; ``response.output_item.added`` names a call first. The answer ends
    with ``response.completed`` (or ``.incomplete``), which carries the usage; ``error`` and
    ``response.failed`` report a failure mid-answer. There is no ``[DONE]``."""

    terminal = "response.completed"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._texted: set[int] = set()  # output indexes whose text came as deltas
        self._final: dict[str, Any] = {}  # the terminal event's response object

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        index = data.get("output_index") if isinstance(data.get("output_index"), int) else 0
        response = data.get("response") if isinstance(data.get("response"), dict) else {}
        self.model = str(response.get("model") or self.model)
        if name == "error":
            self.fail(data)
        elif name == "response.failed":
            self.fail(response.get("error") or "response.failed")
        elif name == "response.output_text.delta":
            self.content.append(str(data.get("delta") or ""))
            self._texted.add(index)
        elif name == "response.function_call_arguments.delta":
            self.calls.setdefault(index, CallParts()).arguments += str(data.get("delta") or "")
        elif name in ("response.output_item.added", "response.output_item.done"):
            item = data.get("item")
            if isinstance(item, dict):
                self._item(index, item, done=name.endswith(".done"))
        elif name in ("response.completed", "response.incomplete"):
            self.done = True
            self._final = response
            self.take_usage(response.get("usage"))
            self.finish_reason = _finish_of(response)

    def _item(self, index: int, item: dict[str, Any], *, done: bool) -> None:
        if item.get("type") == "function_call":
            parts = self.calls.setdefault(index, CallParts())
            parts.id = parts.id or str(item.get("call_id") or item.get("id") or "")
            parts.name = parts.name or str(item.get("name") or "")
            if done and not parts.arguments:  # a server that sent no argument deltas
                parts.arguments = str(item.get("arguments") or "")
        elif done and item.get("type") == "message" and index not in self._texted:
            self.content.append(text_of(item.get("content")))

    def result(self) -> LLMResponse:
        if not self.content and not self.calls and self._final.get("output"):
            return _parse(self.url, self._final)  # only the final object held the output
        return super().result()
