"""What every LLM provider returns and raises, independent of the wire protocol."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from claw_worker.providers import wire_json

Message = dict[str, Any]  # one chat message in OpenAI's shape (role, content, tool_calls, ...)
ToolSchema = dict[str, Any]  # {"type": "function", "function": {name, description, parameters}}


class ErrorKind(StrEnum):
    """What a failed LLM call means. The failover chain (failover.py) picks the next model
    or proxy by it, and the session runner decides by it alone whether a message is retried
    (and when) or failed at once."""

    TRANSIENT = "transient"  # no answer, a timeout, a 5xx, a broken stream: may pass soon
    RATE_LIMIT = "rate_limit"  # 429: ask again once the server's Retry-After has passed
    AUTH = "auth"  # key refused or account without quota: this proxy answers nothing
    UNKNOWN_MODEL = "unknown_model"  # this proxy does not serve the model
    CONTEXT_TOO_LONG = "context_too_long"  # compact the history, then ask again
    INVALID_REQUEST = "invalid_request"  # the request is refused as it is: asking again fails
    BAD_RESPONSE = "bad_response"  # a 200 that is no LLM answer: wrong api_base or protocol

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later, unchanged."""
        return self in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMIT)


# Structured error codes and types: OpenAI's ``error.code`` / ``error.type``, Anthropic's
# ``error.type``, the Responses API's stream error codes. The refusals decide over the HTTP
# status; the retryable ones decide only mid-stream, where there is no status to read.
# Generic ones (``invalid_request_error``) are left to the status.
ERROR_CODES: dict[str, ErrorKind] = {
    "context_length_exceeded": ErrorKind.CONTEXT_TOO_LONG,
    "request_too_large": ErrorKind.CONTEXT_TOO_LONG,  # Anthropic's 413
    "model_not_found": ErrorKind.UNKNOWN_MODEL,
    "invalid_api_key": ErrorKind.AUTH,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "insufficient_quota": ErrorKind.AUTH,  # a 429 that no wait cures: the account is empty
    "billing_error": ErrorKind.AUTH,
    "rate_limit_exceeded": ErrorKind.RATE_LIMIT,
    "rate_limit_error": ErrorKind.RATE_LIMIT,
    "server_error": ErrorKind.TRANSIENT,
    "api_error": ErrorKind.TRANSIENT,
    "overloaded_error": ErrorKind.TRANSIENT,
    "invalid_prompt": ErrorKind.INVALID_REQUEST,
}

# Statuses that mean "ask again later" (besides every 5xx).
_TRANSIENT_STATUSES = frozenset({408, 409, 425})

# The text is read last, and only for a 400/422 without a deciding code. A phrase, not
# a word: "model does not support tools" is a refused request, not an unknown model.
_CONTEXT_WORDS = re.compile(
    r"context.{0,20}(length|window|limit)|maximum context|too many tokens|prompt is too long"
    r"|input is too long|reduce the length",
    re.IGNORECASE,
)
_UNKNOWN_MODEL_WORDS = re.compile(
    r"\b(?:unknown|invalid|unsupported|no such) model\b|\bnot a valid model\b|\bmodel_not_found\b"
    r"|\bmodels?\b\W{0,3}[\w./:@-]*\W{0,3}"
    r"(?:does not exist|doesn't exist|not found|is not found|is not available|not available"
    r"|unavailable)",
    re.IGNORECASE,
)


def _coded(codes: Iterable[str]) -> ErrorKind | None:
    for code in codes:
        kind = ERROR_CODES.get(code.strip().lower())
        if kind is not None:
            return kind
    return None


def classify(status: int | None, detail: str, codes: Iterable[str] = ()) -> ErrorKind:
    """The kind of a failed HTTP call: a structured code naming a refusal (an unknown
    model, a context too long, an empty account) first, then the status (None: no answer
    at all), the text last. A code that only says "try again" does not override the
    status: a 429 is a rate limit whatever its ``type``."""
    coded = _coded(codes)
    if coded is not None and not coded.retryable:
        return coded
    if status is None or status >= 500 or status in _TRANSIENT_STATUSES:
        return ErrorKind.TRANSIENT
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status in (401, 402, 403):
        return ErrorKind.AUTH
    if status == 404:  # an unknown model (or a proxy without that route): the next model
        return ErrorKind.UNKNOWN_MODEL
    if status == 413 or (status in (400, 422) and _CONTEXT_WORDS.search(detail)):
        return ErrorKind.CONTEXT_TOO_LONG
    if status in (400, 422) and _UNKNOWN_MODEL_WORDS.search(detail):
        return ErrorKind.UNKNOWN_MODEL
    return ErrorKind.INVALID_REQUEST


def classify_stream_failure(detail: str, codes: Iterable[str] = ()) -> ErrorKind:
    """An error reported mid-answer (the HTTP status was 200): transient, asking again may
    succeed, unless its code says otherwise or it is a context-length refusal."""
    coded = _coded(codes)
    if coded is not None:
        return coded
    if _CONTEXT_WORDS.search(detail):
        return ErrorKind.CONTEXT_TOO_LONG
    return ErrorKind.TRANSIENT


def error_fields(data: Any) -> tuple[str, list[str]]:
    """The message and the structured codes of an error body or event, in any shape:
    OpenAI's ``{"error": {"message", "type", "code"}}``, Anthropic's ``{"type": "error",
    "error": {"type", "message"}}``, a stream event's ``{"code", "message"}``."""
    if not isinstance(data, dict):
        return (str(data) if data is not None else ""), []
    error = data.get("error")
    if isinstance(error, dict):
        holder, names = error, ("code", "type")
    else:  # a flat event: its "type" is the event's name, not an error code
        holder, names = data, ("code",)
    codes = [str(holder[n]) for n in names if isinstance(holder.get(n), str) and holder[n]]
    message = holder.get("message")
    if not message and isinstance(error, str):
        message = error
    return (str(message) if message else ""), codes


def reported_kind(detail: Any) -> tuple[str, ErrorKind]:
    """(message, kind) of an error an answer reports in its body while its HTTP status is
    200: mid-stream, or, as OpenRouter does for a failure after it accepted the request, as
    the whole JSON body ``{"error": {"code": 502, "message": ...}}``. A numeric ``code`` is
    the HTTP status it stands for and is classified as that status would be; otherwise the
    error may pass (transient) unless its code or text says it is a refusal."""
    text, codes = error_fields(detail)
    holder = detail.get("error") if isinstance(detail, dict) else None
    holder = holder if isinstance(holder, dict) else detail
    status = holder.get("code") if isinstance(holder, dict) else None
    text = text or str(detail)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return text, classify(status, text, codes)
    return text, classify_stream_failure(text, codes)


def reported_error(url: str, data: Any) -> ProviderError | None:
    """The failure a 200 answer's JSON reports (an ``error`` object beside or instead of
    the answer), or None when it reports none."""
    if not isinstance(data, dict) or not data.get("error"):
        return None
    text, kind = reported_kind(data)
    return provider_error(
        f"LLM API {url} answered HTTP 200 with an error: {text[:500]}", kind, status=200
    )


class ProviderError(Exception):
    """A failed LLM call, typed so callers decide on retries without parsing text.

    ``kind`` says what the failure means (see ``ErrorKind``), ``status`` is the HTTP status
    (None for network failures), ``retry_after`` the server's hint in seconds (or, for a
    failover chain whose proxies are all paused, the time until the first is tried again).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind.retryable

    def __repr__(self) -> str:
        return (
            f"ProviderError({str(self)!r}, status={self.status}, kind={self.kind}, "
            f"retry_after={self.retry_after})"
        )


class ContextTooLong(ProviderError):
    """The prompt does not fit the model: the caller should compact and retry, not fail over
    (another model of the same family would very likely reject it as well)."""


def provider_error(
    message: str, kind: ErrorKind, *, status: int | None = None, retry_after: float | None = None
) -> ProviderError:
    """A ``ProviderError`` of ``kind``; a ``ContextTooLong`` for a context-length refusal."""
    cls = ContextTooLong if kind is ErrorKind.CONTEXT_TOO_LONG else ProviderError
    return cls(message, kind=kind, status=status, retry_after=retry_after)


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
            value, cleaned = wire_json.loads_checked(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            return cls(id, name, {}, raw, f"arguments are not valid JSON ({exc})")
        if not isinstance(value, dict):
            return cls(id, name, {}, raw, f"arguments must be a JSON object, got {raw[:80]!r}")
        if cleaned:  # the tools (and the next request) read these
            raw = json.dumps(value, ensure_ascii=False)
        return cls(id, name, value, raw)

    def to_message(self) -> dict[str, Any]:
        """This call as it appears in an assistant message's ``tool_calls``, its name as the
        APIs accept it there (see ``wire_name``)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": wire_name(self.name), "arguments": self.raw_arguments},
        }


_WIRE_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_NOT_WIRE = re.compile(r"[^a-zA-Z0-9_-]+")


def wire_name(name: str) -> str:
    """A tool name OpenAI and Anthropic accept in a history (``^[a-zA-Z0-9_-]{1,64}$``).

    A model may call a tool by any name (``functions.read_file``, ``read file``, "" in a
    ``<function_call>`` block or from a loose proxy); it gets "unknown tool" back, but the
    call is replayed on the next request, and a name outside the pattern makes that request
    a 400, failing the turn the model could have corrected. Registered names are unchanged."""
    if _WIRE_NAME.fullmatch(name):
        return name
    return _NOT_WIRE.sub("_", name).strip("_")[:64] or "unnamed_tool"


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
        except (ValueError, RecursionError):  # RecursionError: nested too deep
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
        # "length" is kept with tool calls: the last call was then cut off at max_tokens
        # and must not be run (the agent loop says so to the model).
        finish_reason="tool_calls" if calls and text_finish != "length" else text_finish,
        usage=counts,
        model=str(model or ""),
    )
