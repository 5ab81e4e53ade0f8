"""Streamed answers (``providers.proxy.stream``) in every protocol against the scripted
loopback LLM server, which answers ``"stream": true`` with the real event streams
(tests/llm_sse.py): chat completions chunks, Responses API events, Anthropic events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.config.schema import Config, ProxyConfig
from claw_worker.contract import InboundMessage
from claw_worker.providers import ChatProvider, ContextTooLong, LLMResponse, ProviderError
from claw_worker.providers.anthropic import AnthropicAccumulator
from claw_worker.providers.registry import build_proxy
from claw_worker.providers.responses import ResponsesAccumulator
from tests import llm_server as llm
from tests import llm_sse
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.llm import SAMPLE_MESSAGES as MESSAGES
from tests.fixtures.llm import SAMPLE_TOOLS as TOOLS
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer, Script

TERMINAL = {"chat_completions": "[DONE]", "responses": "response.completed"}
TERMINAL["anthropic"] = "message_stop"
LONG_PATH = "some/deeply/nested/directory/with/a/long/name/file.txt"


@pytest.fixture(params=list(TERMINAL))
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(llm_server: LLMServer, protocol: str, *, stream: bool = True) -> ChatProvider:
    proxy = ProxyConfig(
        api_base=llm_server.base_url, api_key="sk-test", protocol=protocol, stream=stream
    )
    built = build_proxy(proxy)
    assert built is not None
    return built


@pytest.fixture
def provider(llm_server: LLMServer, protocol: str) -> Iterator[ChatProvider]:
    built = build(llm_server, protocol)
    try:
        yield built
    finally:
        built.close()


def chat(provider: ChatProvider) -> LLMResponse:
    return provider.chat(MESSAGES, TOOLS, "test-model", 256, 0.2)


def raised(provider: ChatProvider) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        chat(provider)
    return info.value


def test_streamed_text(llm_server: LLMServer, provider: ChatProvider, protocol: str) -> None:
    answer = "A streamed answer, long enough to arrive in several deltas."
    llm_server.reply(answer)
    response = chat(provider)
    assert response.content == answer
    assert response.tool_calls == [] and response.finish_reason == "stop"
    assert response.model == "test-model"
    assert response.usage["total_tokens"] > 0
    body = llm_server.requests[0]
    assert body["stream"] is True
    assert llm_server.request_headers[0]["accept"] == "text/event-stream"
    if protocol == "chat_completions":
        assert body["stream_options"] == {"include_usage": True}


def test_streamed_answer_equals_the_plain_one(llm_server: LLMServer, protocol: str) -> None:
    """Text, tool calls, usage, finish reason and model come out as without streaming."""
    calls = [
        {"id": "call_one", "name": "read_file", "arguments": {"path": LONG_PATH}},
        {"id": "call_two", "name": "list_files", "arguments": {"dir": ".", "depth": 2}},
    ]
    script = Script(text="Let me read both of those for you.", tool_calls=calls)
    llm_server.push(script, script)
    streamed, plain = build(llm_server, protocol), build(llm_server, protocol, stream=False)
    try:
        got, expected = chat(streamed), chat(plain)
    finally:
        streamed.close()
        plain.close()
    assert [r.get("stream") for r in llm_server.requests] == [True, None]
    assert got == expected
    assert got.content == "Let me read both of those for you."
    assert [c.id for c in got.tool_calls] == ["call_one", "call_two"]
    assert got.usage["completion_tokens"] > 1  # the final count (not message_start's 1)
    assert got.usage["total_tokens"] == got.usage["prompt_tokens"] + got.usage["completion_tokens"]


def test_streamed_tool_calls_with_split_arguments(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    llm_server.push(
        llm.tool_calls([("read_file", {"path": LONG_PATH}), ("list_files", {"dir": "."})])
    )
    response = chat(provider)
    assert response.finish_reason == "tool_calls" and response.content == ""
    first, second = response.tool_calls
    assert (first.name, first.arguments) == ("read_file", {"path": LONG_PATH})
    assert (second.name, second.arguments) == ("list_files", {"dir": "."})
    assert first.id and second.id and first.id != second.id
    assert first.arguments_error is None


# Anthropic's tool_use input is an object on the wire: it cannot carry broken JSON.
@pytest.mark.parametrize("protocol", ["chat_completions", "responses"])
def test_streamed_bad_arguments_become_a_tool_error(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    llm_server.reply_tool_call("read_file", '{"path": "a.txt"')  # truncated JSON
    (call,) = chat(provider).tool_calls
    assert call.arguments == {} and call.raw_arguments == '{"path": "a.txt"'
    assert call.arguments_error and "not valid JSON" in call.arguments_error


def test_streamed_text_function_call_is_extracted(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    llm_server.reply(
        'Let me look. <function_call>{"name": "read_file", "arguments": {"path": "x"}}'
        "</function_call>"
    )
    response = chat(provider)
    assert response.content == "Let me look."
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("read_file", {"path": "x"})]
    assert response.finish_reason == "tool_calls"


def test_http_errors_are_classified_as_without_streaming(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    for status, kind, wait in ((429, "rate_limit", 3), (500, "transient", 2)):
        llm_server.reply_error(status, headers={"Retry-After": str(wait)})
        error = raised(provider)
        assert (error.status, error.kind, error.retry_after) == (status, kind, wait)
        assert error.retryable
    assert "scripted error 500" in str(error)
    message = "This model's maximum context length is 8192 tokens."
    llm_server.reply_error(400, {"error": {"message": message, "type": "invalid_request_error"}})
    error = raised(provider)
    assert isinstance(error, ContextTooLong) and error.status == 400 and not error.retryable


def test_stream_dropped_mid_answer_is_transient(
    llm_server: LLMServer, provider: ChatProvider, protocol: str
) -> None:
    llm_server.push(Script(text="this answer never finishes, sadly", drop_after=4))
    error = raised(provider)
    assert error.retryable and error.kind == "transient"
    assert f"ended before {TERMINAL[protocol]}" in str(error)
    llm_server.reply("second try")  # the provider is still usable afterwards
    assert chat(provider).content == "second try"


def test_stream_missing_only_its_terminal_event_is_transient(
    llm_server: LLMServer, provider: ChatProvider, protocol: str
) -> None:
    """Every delta arrived, even the usage and the stop reason: still not a whole answer."""
    script = Script(text="all of the text arrives")
    events = llm_sse.frames(protocol, {"stream_options": {"include_usage": True}}, script)
    llm_server.push(Script(text=script.text, drop_after=len(events) - 1))
    error = raised(provider)
    assert error.retryable and error.kind == "transient"
    assert f"ended before {TERMINAL[protocol]}" in str(error)


def test_error_event_mid_stream_is_transient(llm_server: LLMServer, provider: ChatProvider) -> None:
    llm_server.push(Script(text="half an answer, then trouble", stream_error="Overloaded"))
    error = raised(provider)
    assert error.retryable and error.kind == "transient"
    assert "failed mid-stream: Overloaded" in str(error)


def test_server_answering_json_to_a_stream_request(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    llm_server.push(Script(text="plain JSON after all", ignore_stream=True))
    response = chat(provider)
    assert response.content == "plain JSON after all" and response.usage["total_tokens"] > 0
    assert llm_server.requests[0]["stream"] is True


def test_disconnect_before_answer_is_transient(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    llm_server.push(Script(disconnect=True))
    error = raised(provider)
    assert error.retryable and error.kind == "transient"


def test_registry_passes_stream_through(llm_server: LLMServer, protocol: str) -> None:
    for stream in (True, False):
        built = build(llm_server, protocol, stream=stream)
        assert getattr(built, "stream", None) is stream
        built.close()


# -- events the scripted server does not send ----------------------------------------------


def test_responses_error_event_is_transient() -> None:
    acc = ResponsesAccumulator("http://llm.test/v1/responses")
    acc.feed("response.created", '{"type": "response.created", "response": {"model": "m"}}')
    with pytest.raises(ProviderError) as info:
        acc.feed("error", '{"type": "error", "code": "server_error", "message": "try again"}')
    assert info.value.retryable and info.value.kind == "transient"
    assert "failed mid-stream: try again" in str(info.value)


def test_a_context_length_failure_mid_stream_asks_for_compaction() -> None:
    """``response.failed`` for an over-long input is the same refusal as an HTTP 400: the
    agent compacts and retries instead of failing over."""
    acc = ResponsesAccumulator("http://llm.test/v1/responses")
    error = {"code": "context_length_exceeded",
             "message": "Your input exceeds the context window of this model."}  # fmt: skip
    with pytest.raises(ContextTooLong) as info:
        acc.on_event("response.failed", {"type": "response.failed", "response": {"error": error}})
    assert info.value.kind == "context_too_long" and not info.value.retryable


def test_responses_output_only_in_the_completed_event() -> None:
    """A proxy that sends no deltas: the completed response's output is the answer."""
    acc = ResponsesAccumulator("http://llm.test/v1/responses")
    item = {"type": "message", "content": [{"type": "output_text", "text": "whole"}]}
    final = {"model": "m", "output": [item], "usage": {"input_tokens": 5, "output_tokens": 2}}
    acc.on_event("response.completed", {"type": "response.completed", "response": final})
    assert acc.done
    response = acc.result()
    assert (response.content, response.model, response.usage["total_tokens"]) == ("whole", "m", 7)


def test_responses_items_without_deltas() -> None:
    """A proxy that sends whole items in ``response.output_item.done`` and no deltas."""
    acc = ResponsesAccumulator("http://llm.test/v1/responses")
    call = {"type": "function_call", "call_id": "call_9", "name": "read_file", "arguments": ""}
    message = {"type": "message", "content": [{"type": "output_text", "text": "Reading."}]}
    acc.on_event("response.output_item.done", {"output_index": 0, "item": message})
    acc.on_event("response.output_item.added", {"output_index": 1, "item": call})
    done = {**call, "arguments": '{"path": "a.txt"}'}
    acc.on_event("response.output_item.done", {"output_index": 1, "item": done})
    acc.on_event("response.completed", {"response": {"output": [], "usage": {}}})
    response = acc.result()
    assert response.content == "Reading."
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_9", "read_file", {"path": "a.txt"})
    ]


def test_anthropic_usage_from_both_events() -> None:
    acc = AnthropicAccumulator("http://llm.test/v1/messages")
    start = {"model": "claude-test", "usage": {"input_tokens": 40, "output_tokens": 1}}
    acc.on_event("message_start", {"message": start})
    acc.on_event("content_block_start", {"index": 0, "content_block": {"type": "text"}})
    acc.on_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "x"}})
    stop = {"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}}
    acc.on_event("message_delta", stop)
    acc.on_event("message_stop", {})
    response = acc.result()
    assert response.usage["prompt_tokens"] == 40 and response.usage["completion_tokens"] == 9
    assert (response.content, response.finish_reason) == ("x", "length")


# -- through the agent ---------------------------------------------------------------------


def config_for(llm_server: LLMServer, redis_url: str, protocol: str) -> Config:
    proxy = {"api_base": llm_server.base_url, "models": ["test-model"], "stream": True}
    proxy["protocol"] = protocol
    return Config.model_validate({"providers": {"proxy": proxy}, "redis": {"url": redis_url}})


def msg(text: str) -> InboundMessage:
    return InboundMessage(channel="test", chat_id="42", sender_id="u1", text=text)


def tool_results(protocol: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(call id, result text) of each tool result a request sends back."""
    if protocol == "responses":
        items = [i for i in body["input"] if i.get("type") == "function_call_output"]
        return [(i["call_id"], i["output"]) for i in items]
    if protocol == "anthropic":
        blocks = [
            b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]
        ]
        return [(b["tool_use_id"], b["content"]) for b in blocks if b["type"] == "tool_result"]
    return [(m["tool_call_id"], m["content"]) for m in body["messages"] if m["role"] == "tool"]


def test_agent_tool_round_trip_streamed(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer, protocol: str
) -> None:
    client: redis.Redis = redis_server.client()
    arguments = {"path": "out/hello.txt", "content": "hi there"}
    call = {"id": "call_w1", "name": "write_file", "arguments": arguments}
    llm_server.push(Script(tool_calls=[call]))
    llm_server.reply("I wrote the file.")
    agent = Agent(config_for(llm_server, redis_server.url, protocol), client)

    reply = agent.handle(msg("please write hello.txt"))

    assert reply.text == "I wrote the file." and reply.tool_steps == 1 and reply.llm_calls == 2
    assert reply.usage.get("total_tokens", 0) > 0
    assert (claw_home.workspace / "out" / "hello.txt").read_text() == "hi there"
    first, second = llm_server.requests
    assert first["stream"] is True and second["stream"] is True
    assert tool_results(protocol, second) == [("call_w1", "Wrote 8 bytes to out/hello.txt")]


def test_stop_abandons_a_slow_stream(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer, protocol: str
) -> None:
    client: redis.Redis = redis_server.client()
    # 10 to 15 events 0.3 s apart: the whole answer would take 3 to 4.5 s.
    llm_server.push(Script(text="x" * 64, chunk_delay=0.3))
    agent = Agent(config_for(llm_server, redis_server.url, protocol), client)
    streaming_since: list[float] = []  # when the server first had the request

    def stop_once_streaming() -> bool:
        # /stop 0.3 s into the stream, not 0.3 s after the start: on a loaded machine the
        # run may take longer than that to send the request at all (seen in CI).
        if not streaming_since and llm_server.requests:
            streaming_since.append(time.monotonic())
        return bool(streaming_since) and time.monotonic() >= streaming_since[0] + 0.3

    reply = agent.handle(msg("slow please"), should_stop=stop_once_streaming)

    elapsed = time.monotonic() - streaming_since[0]
    assert reply.cancelled and reply.text == ""
    assert elapsed < 1.5, f"the streamed call was not abandoned quickly ({elapsed:.2f} s)"
    assert llm_server.requests[0]["stream"] is True
