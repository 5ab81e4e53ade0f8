"""What every LLM provider returns and raises, independent of the wire protocol."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Message = dict[str, Any]  # one chat message in OpenAI's shape (role, content, tool_calls, ...)
ToolSchema = dict[str, Any]  # {"type": "function", "function": {name, description, parameters}}

# Statuses worth retrying: the request may succeed later unchanged.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

# What a failure means for failover (see failover.py): retry elsewhere, skip the proxy, or stop.
ErrorKind = Literal["rate_limit", "routing", "transient", "auth", "context_too_long", "other"]

_CONTEXT_WORDS = re.compile(
    r"context.{0,20}(length|window|limit)|maximum context|too many tokens|prompt is too long"
    r"|input is too long|reduce the length",
    re.IGNORECASE,
)
_MODEL_WORDS = re.compile(r"\bmodel\b", re.IGNORECASE)


class ProviderError(Exception):
    """A failed LLM call, typed so callers decide on retries without parsing text.

    ``status`` is the HTTP status (None for network failures), ``retryable`` says whether
    the same request may succeed later, ``retry_after`` is the server's hint in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        # Derived from the status when not given, so every raiser gets a kind for free.
        self.kind: ErrorKind = kind or classify(status, message)

    def __repr__(self) -> str:
        return (
            f"ProviderError({str(self)!r}, status={self.status}, kind={self.kind}, "
            f"retryable={self.retryable}, retry_after={self.retry_after})"
        )


class ContextTooLong(ProviderError):
    """The prompt does not fit the model: the caller should compact and retry, not fail over
    (another model of the same family would very likely reject it as well)."""


def classify(status: int | None, detail: str) -> ErrorKind:
    """The failover meaning of a status and its error text."""
    if status is None or status in (408, 500, 502, 503, 504, 520, 522, 524, 529):
        return "transient"  # no answer, a timeout or a struggling upstream
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status in (400, 413, 422) and _CONTEXT_WORDS.search(detail):
        return "context_too_long"
    if status == 404 or (status == 400 and _MODEL_WORDS.search(detail)):
        return "routing"  # unknown model (or a proxy without that route): try the next one
    return "other"


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model asked for.

    ``raw_arguments`` is the JSON text as sent (kept for the history, which must replay it
    verbatim); ``arguments`` is its parse, empty with ``arguments_error`` set when the
    model sent something that is not a JSON object. The tool layer reports that error back
    to the model instead of crashing.
    """

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    raw_arguments: str = "{}"
    arguments_error: str | None = None

    @classmethod
    def parse(cls, id: str, name: str, raw: str | dict[str, Any] | None) -> ToolCall:
        if isinstance(raw, dict):
            return cls(id, name, raw, json.dumps(raw, ensure_ascii=False))
        raw = raw or ""
        if not raw.strip():  # some models send "" for a tool without parameters
            return cls(id, name, {}, raw or "{}")
        try:
            value = json.loads(raw)
        except ValueError as exc:
            return cls(id, name, {}, raw, f"arguments are not valid JSON ({exc})")
        if not isinstance(value, dict):
            return cls(id, name, {}, raw, f"arguments must be a JSON object, got {raw[:80]!r}")
        return cls(id, name, value, raw)

    def to_message(self) -> dict[str, Any]:
        """This call as it appears in an assistant message's ``tool_calls``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.raw_arguments},
        }


@dataclass(frozen=True)
class LLMResponse:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""


class ChatProvider(Protocol):
    """One chat call. A failover chain of providers will implement the same protocol."""

    def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        model: str,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse: ...

    def close(self) -> None: ...


# Native compaction (the Responses API's ``/responses/compact``) leaves opaque items only
# the proxy that made them can read. They ride on the compaction summary's system message
# under this key, tagged with the endpoint that made them: ``{"proxy": api_base, "items":
# [...]}``. The Responses provider at that api_base sends them as input items; every other
# provider leaves them out.
COMPACTION = "_compaction"


def without_compaction(messages: Sequence[Message]) -> list[Message]:
    """``messages`` as plain chat messages: the native compaction items left out."""
    return [
        {k: v for k, v in m.items() if k != COMPACTION} if COMPACTION in m else m for m in messages
    ]


_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)


def body_preview(text: str, limit: int = 200) -> str:
    """A short readable preview of an error body; HTML pages are reduced to their text."""
    if "<" in text and ">" in text:
        text = _TAGS.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_FUNCTION_CALL = re.compile(r"<function_call>\s*(.*?)\s*</function_call>", re.DOTALL)


def extract_text_tool_calls(content: str) -> tuple[str, list[ToolCall]]:
    """Tool calls some models write as ``<function_call>{"name", "arguments"}</function_call>``
    text instead of structured calls; returns the remaining text and the calls. A block that
    is not JSON with a name stays in the text, so nothing the model said is lost."""
    if "<function_call>" not in content:
        return content, []
    calls: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        try:
            data = json.loads(match.group(1))
        except ValueError:
            return match.group(0)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return match.group(0)
        args = data.get("arguments", data.get("parameters"))
        calls.append(
            ToolCall.parse(f"call_text_{len(calls)}", data["name"], args if args else None)
        )
        return ""

    rest = _FUNCTION_CALL.sub(take, content)
    return (rest.strip() if calls else content), calls


def build_response(
    content: str, calls: list[ToolCall], *, text_finish: str, usage: Any, model: Any
) -> LLMResponse:
    """The common tail of every protocol's parser: tool calls written as ``<function_call>``
    text when the API gave none, the finish reason, and usage under chat-completions names
    (so run records add up across protocols)."""
    if not calls:
        content, calls = extract_text_tool_calls(content)
    counts = {k: v for k, v in (usage or {}).items() if isinstance(v, int)}
    counts.setdefault("prompt_tokens", counts.get("input_tokens", 0))
    counts.setdefault("completion_tokens", counts.get("output_tokens", 0))
    counts.setdefault("total_tokens", counts["prompt_tokens"] + counts["completion_tokens"])
    return LLMResponse(
        content=content,
        tool_calls=calls,
        finish_reason="tool_calls" if calls else text_finish,
        usage=counts,
        model=str(model or ""),
    )
