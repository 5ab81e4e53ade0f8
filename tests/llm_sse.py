"""Streamed answers of the scripted LLM server (tests/llm_server.py): the server-sent events
of one ``Script`` in each protocol, built from the same answer a non-streamed call gets.

- chat completions: ``data:`` chunks (text and tool-call argument deltas, usage last when
  ``stream_options.include_usage``), ended by ``data: [DONE]``;
- Responses: ``event: response.*`` events (output items added, text and function-call
  argument deltas, items done), ended by ``response.completed`` with the usage;
- Anthropic: ``message_start``, ``content_block_*`` (``text_delta``, ``input_json_delta``),
  ``message_delta`` (stop reason, output usage), ended by ``message_stop``.

``frames`` always ends with the terminal event, so dropping the last frames of a stream
leaves an unfinished answer; ``error_frame`` is the protocol's mid-stream failure.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.llm_wire import (
    ANTHROPIC,
    RESPONSES,
    Script,
    anthropic_body,
    finish_of,
    head,
    responses_body,
    usage_of,
    wire_tool_calls,
)

Event = tuple[str | None, dict[str, Any] | str]  # (event: name, data: payload)


def frames(protocol: str, body: dict[str, Any], script: Script) -> list[str]:
    """The SSE frames of ``script``'s answer, the terminal event last."""
    if protocol == RESPONSES:
        events = responses_events(body, script)
    elif protocol == ANTHROPIC:
        events = anthropic_events(body, script)
    else:
        events = [(None, chunk) for chunk in chunks(body, script)] + [(None, "[DONE]")]
    return [_frame(name, data) for name, data in events]


def error_frame(protocol: str, message: str) -> str:
    """A failure reported mid-answer, as each protocol reports one."""
    if protocol == RESPONSES:
        error = {"code": "server_error", "message": message}
        failed = {"object": "response", "status": "failed", "error": error, "output": []}
        return _frame("response.failed", {"type": "response.failed", "response": failed})
    if protocol == ANTHROPIC:
        error = {"type": "overloaded_error", "message": message}
        return _frame("error", {"type": "error", "error": error})
    return _frame(None, {"error": {"message": message, "type": "server_error"}})


def _frame(name: str | None, data: dict[str, Any] | str) -> str:
    line = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {name}\n" if name else "") + f"data: {line}\n\n"


def _pieces(text: str, size: int) -> list[str]:
    """``text`` in several deltas, as real servers send it."""
    return [text[start : start + size] for start in range(0, len(text), size)]


def chunks(body: dict[str, Any], script: Script) -> list[dict[str, Any]]:
    """Chat completions chunks (without the ``[DONE]`` line)."""
    top = head(body, "chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**top, "choices": [choice]}

    out = [chunk({"role": "assistant", "content": ""})]
    content, calls = script.text or "", wire_tool_calls(script)
    out.extend(chunk({"content": piece}) for piece in _pieces(content, 8))
    for index, call in enumerate(calls):
        fn, args = call["function"], call["function"]["arguments"]
        first = {"index": index, "id": call["id"], "type": "function"}
        out.append(
            chunk({"tool_calls": [{**first, "function": {"name": fn["name"], "arguments": ""}}]})
        )
        for piece in _pieces(args, 16):
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, finish_of(script)))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = usage_of(body, content + json.dumps(calls))  # as completion() counts
        out.append({**top, "choices": [], "usage": usage})
    return out


def responses_events(body: dict[str, Any], script: Script) -> list[Event]:
    """The Responses API events of ``responses_body``'s answer."""
    final = responses_body(body, script)
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(final["output"]):
        where = {"output_index": index, "item_id": item["id"]}
        opened = copy.deepcopy(item) | {"status": "in_progress"}
        if item["type"] == "message":
            opened["content"] = []
            text = item["content"][0]["text"]
            deltas = [
                {"type": "response.output_text.delta", **where, "content_index": 0, "delta": piece}
                for piece in _pieces(text, 8)
            ]
        else:
            opened["arguments"] = ""
            deltas = [
                {"type": "response.function_call_arguments.delta", **where, "delta": piece}
                for piece in _pieces(item["arguments"], 16)
            ]
        events.append({"type": "response.output_item.added", "output_index": index, "item": opened})
        events.extend(deltas)
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": final})
    return [(event["type"], {**event, "sequence_number": n}) for n, event in enumerate(events)]


def anthropic_events(body: dict[str, Any], script: Script) -> list[Event]:
    """The Anthropic stream events of ``anthropic_body``'s answer."""
    final = anthropic_body(body, script)
    usage = final["usage"]
    started = {**final, "content": [], "stop_reason": None}
    started["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": started}]
    for index, block in enumerate(final["content"]):
        if block["type"] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"], 8)]
        else:
            opened = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in ["", *_pieces(json.dumps(block["input"]), 16)]
            ]
        events.append({"type": "content_block_start", "index": index, "content_block": opened})
        if index == 0:
            events.append({"type": "ping"})
        events.extend({"type": "content_block_delta", "index": index, "delta": d} for d in deltas)
        events.append({"type": "content_block_stop", "index": index})
    stop = {"stop_reason": final["stop_reason"], "stop_sequence": None}
    output = {"output_tokens": usage["output_tokens"]}
    events.append({"type": "message_delta", "delta": stop, "usage": output})
    events.append({"type": "message_stop"})
    return [(event["type"], event) for event in events]
