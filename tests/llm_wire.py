"""Wire formats of the scripted LLM server (tests/llm_server.py): the ``Script`` entries and
the answer bodies built from them in each protocol the server speaks.

- chat completions (``POST /v1/chat/completions``);
- the OpenAI Responses API (``POST /v1/responses``: ``output`` items);
- the Anthropic Messages API (``POST /v1/messages``: ``content`` blocks).

Streamed (SSE) answers are built from these bodies in tests/llm_sse.py.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

CHAT, RESPONSES, ANTHROPIC = "chat_completions", "responses", "anthropic"
COMPACT = "responses_compact"
ROUTES = {
    "/v1/chat/completions": CHAT,
    "/v1/responses": RESPONSES,
    "/v1/responses/compact": COMPACT,
    "/v1/messages": ANTHROPIC,
}


@dataclass(frozen=True)
class Script:
    """One scripted answer. ``status`` other than 200 makes it an HTTP error with ``body``;
    a ``body`` with status 200 is sent verbatim as the answer (see ``raw_answer``)."""

    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {id?, name, arguments}
    status: int = 200
    body: str = ""  # the error body (or a raw 200 answer), sent verbatim (JSON or HTML)
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False  # close the connection without answering
    finish_reason: str | None = None
    # Streaming (SSE, tests/llm_sse.py) only: close the connection after this many events,
    # without the terminal one ([DONE], response.completed, message_stop); a pause before
    # each event (a slow streamed answer); an error event with this message half-way
    # through instead of the rest; answer plain JSON (a server that ignores "stream").
    drop_after: int | None = None
    chunk_delay: float = 0.0
    stream_error: str | None = None
    ignore_stream: bool = False

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


def request_chars(body: dict[str, Any]) -> int:
    """A request's conversation size: the characters of its ``messages`` (or Responses
    ``input``) as JSON, what a size-limited server counts instead of tokens."""
    items = body.get("messages", body.get("input"))
    return len(json.dumps(items, ensure_ascii=False))


def context_too_long(size: int, limit: int) -> Script:
    """OpenAI's refusal of a prompt over the model's window: HTTP 400 with
    ``code: context_length_exceeded``."""
    message = (
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {size} tokens. Please reduce the length of the messages."
    )
    return error(
        400,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    )


def raw_answer(
    body: dict[str, Any] | list[Any] | str, content_type: str = "application/json"
) -> Script:
    """A 200 whose body is exactly ``body`` (JSON unless a str): an answer of a shape the
    scripted replies never take, such as a proxy's error reported with status 200, or
    (``text/event-stream``) a stream with events of the wrong shape."""
    raw = body if isinstance(body, str) else json.dumps(body)
    return Script(status=200, body=raw, content_type=content_type)


def _parts_text(content: Any) -> str:
    if isinstance(content, list):  # content parts / blocks
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message's text, in any protocol (``messages`` or Responses ``input``)."""
    items = body.get("messages")
    if items is None:
        items = body.get("input")
        if isinstance(items, str):
            return items
    for message in reversed(items or []):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _parts_text(message.get("content"))
            if text.strip() or "content" not in message:
                return text
            # An Anthropic user turn holding only tool results: look further back.
    return ""


def valid_request(protocol: str, body: Any) -> str | None:
    """Why ``body`` is not a request of ``protocol``, or None when it is."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if protocol in (RESPONSES, COMPACT):
        items = body.get("input")
        if not isinstance(items, (list, str)):
            return "request body must have an 'input' list or string"
        if protocol == COMPACT and not isinstance(body.get("model"), str):
            return "model: field required"
        for index, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                return f"input[{index}] must be an object"
            if item.get("type") == "compaction" and not isinstance(
                item.get("encrypted_content"), str
            ):
                return f"input[{index}].encrypted_content: field required"
        return None
    if not isinstance(body.get("messages"), list):
        return "request body must be a JSON object with a 'messages' list"
    if protocol == ANTHROPIC and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: field required"
    return tool_exchange_problem(body["messages"]) if protocol == CHAT else None


TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def tool_exchange_problem(messages: list[Any]) -> str | None:
    """What OpenAI's chat completions refuse (HTTP 400) in the tool calls of a history: a
    function name outside its pattern, a tool message that answers no call of the assistant
    message before it, a call left without its tool message."""
    open_ids: list[str] = []  # calls of the last assistant message not yet answered
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            if message.get("tool_call_id") not in open_ids:
                return (
                    f"Invalid parameter: messages[{index}]: messages with role 'tool' must be "
                    "a response to a preceeding message with 'tool_calls'."
                )
            open_ids.remove(message["tool_call_id"])
            continue
        if open_ids:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_ids)}"
            )
        for number, call in enumerate(message.get("tool_calls") or [] if role else []):
            name = (call.get("function") or {}).get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                return (
                    f"Invalid 'messages[{index}].tool_calls[{number}].function.name': string "
                    "does not match pattern. Expected a string that matches the pattern "
                    "'^[a-zA-Z0-9_-]+$'."
                )
            open_ids.append(call.get("id"))
    return None


def wire_tool_calls(script: Script) -> list[dict[str, Any]]:
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


def usage_of(body: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = len(json.dumps(body.get("messages") or [])) // 4
    done = max(1, len(completion) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def head(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model") or "test-model",
        "system_fingerprint": "fp_test",
    }


def finish_of(script: Script) -> str:
    return script.finish_reason or ("tool_calls" if script.tool_calls else "stop")


def completion(body: dict[str, Any], script: Script) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text, "refusal": None}
    calls = wire_tool_calls(script)
    if calls:
        message["tool_calls"] = calls
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_of(script)}
    usage = usage_of(body, (script.text or "") + json.dumps(calls))
    return {**head(body, "chat.completion"), "choices": [choice], "usage": usage}


def script_to_dict(script: Script) -> dict[str, Any]:
    """The JSON form ``/_control/push`` accepts."""
    return asdict(script)


def _arguments(call: dict[str, Any]) -> str:
    args = call["arguments"]
    return args if isinstance(args, str) else json.dumps(args)


def responses_body(body: dict[str, Any], script: Script) -> dict[str, Any]:
    """A Responses API answer: a message item and/or ``function_call`` items."""
    output: list[dict[str, Any]] = []
    if script.text is not None:
        part = {"type": "output_text", "text": script.text, "annotations": []}
        output.append(
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    for call in script.tool_calls:
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex[:24]}",
                "call_id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "name": call["name"],
                "arguments": _arguments(call),
                "status": "completed",
            }
        )
    counts = usage_of({"messages": body.get("input")}, (script.text or "") + json.dumps(output))
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": body.get("model") or "test-model",
        "output": output,
        "usage": {
            "input_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"],
            "total_tokens": counts["total_tokens"],
        },
    }


def anthropic_body(body: dict[str, Any], script: Script) -> dict[str, Any]:
    """An Anthropic Messages answer: ``text`` and/or ``tool_use`` content blocks."""
    blocks: list[dict[str, Any]] = []
    if script.text is not None:
        blocks.append({"type": "text", "text": script.text})
    for call in script.tool_calls:
        args = call["arguments"]
        if isinstance(args, str):  # tool_use.input is an object on this wire
            try:
                args = json.loads(args)
            except ValueError:
                args = {"_raw": args}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": call["name"],
                "input": args,
            }
        )
    counts = usage_of(body, (script.text or "") + json.dumps(blocks))
    stop = script.finish_reason or ("tool_use" if script.tool_calls else "end_turn")
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "test-model",
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"],
        },
    }


def compaction_body(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/responses/compact`` answer: the input's user messages, then one compaction item.
    Its opaque content is readable here (base64 JSON of what it folded in: the user texts,
    how many items and earlier compaction items) so tests can follow it."""
    items = (
        body["input"]
        if isinstance(body["input"], list)
        else [{"role": "user", "content": body["input"]}]
    )
    users = [i for i in items if i.get("role") == "user" and i.get("type", "message") == "message"]
    folded = {
        "users": [_parts_text(i.get("content")) for i in users],
        "items": len(items),
        "compactions": sum(i.get("type") == "compaction" for i in items),
    }
    output: list[dict[str, Any]] = [
        {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": _parts_text(i.get("content"))}],
        }
        for i in users
    ]
    encrypted = base64.b64encode(json.dumps(folded).encode()).decode()
    output.append(
        {"type": "compaction", "id": f"cmp_{uuid.uuid4().hex[:24]}", "encrypted_content": encrypted}
    )
    counts = usage_of({"messages": items}, encrypted)
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": output,
        "usage": {
            "input_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"],
            "total_tokens": counts["total_tokens"],
        },
    }


def answer_body(protocol: str, body: dict[str, Any], script: Script) -> dict[str, Any]:
    if protocol == COMPACT:
        return compaction_body(body)
    if protocol == RESPONSES:
        return responses_body(body, script)
    if protocol == ANTHROPIC:
        return anthropic_body(body, script)
    return completion(body, script)
