"""Streamed chat completions (``providers.proxy.stream``) against the scripted loopback
LLM server, which answers ``"stream": true`` with SSE chunks as OpenAI does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.providers import LLMResponse, OpenAICompatProvider, ProviderError
from claw_worker.providers.base import ContextTooLong
from claw_worker.providers.registry import build_proxy
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.llm import SAMPLE_MESSAGES as MESSAGES
from tests.fixtures.llm import SAMPLE_TOOLS as TOOLS
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer, Script


@pytest.fixture
def provider(llm_server: LLMServer) -> Iterator[OpenAICompatProvider]:
    p = OpenAICompatProvider(llm_server.base_url, "sk-test", timeout_sec=10, stream=True)
    try:
        yield p
    finally:
        p.close()


def chat(provider: OpenAICompatProvider) -> LLMResponse:
    return provider.chat(MESSAGES, TOOLS, "test-model", 256, 0.2)


def test_streamed_text(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    answer = "A streamed answer, long enough to arrive in several chunks."
    llm_server.reply(answer)
    response = chat(provider)
    assert response.content == answer
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.model == "test-model"
    body = llm_server.requests[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_usage_is_captured(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.reply("counted")
    usage = chat(provider).usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_streamed_tool_calls_with_split_arguments(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    long_path = "some/deeply/nested/directory/with/a/long/name/file.txt"
    llm_server.push(
        llm.tool_calls([("read_file", {"path": long_path}), ("list_files", {"dir": "."})])
    )
    response = chat(provider)
    assert response.finish_reason == "tool_calls"
    first, second = response.tool_calls
    assert (first.name, first.arguments) == ("read_file", {"path": long_path})
    assert (second.name, second.arguments) == ("list_files", {"dir": "."})
    assert first.id.startswith("call_") and first.id != second.id
    assert first.arguments_error is None


def test_streamed_bad_arguments_become_a_tool_error(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.reply_tool_call("read_file", '{"path": "a.txt"')  # truncated JSON
    (call,) = chat(provider).tool_calls
    assert call.arguments == {} and call.raw_arguments == '{"path": "a.txt"'
    assert call.arguments_error and "not valid JSON" in call.arguments_error


def test_streamed_text_function_call_is_extracted(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.reply(
        'Let me look. <function_call>{"name": "read_file", "arguments": {"path": "x"}}'
        "</function_call>"
    )
    response = chat(provider)
    assert response.content == "Let me look."
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("read_file", {"path": "x"})]
    assert response.finish_reason == "tool_calls"


def test_http_500_before_streaming_is_retryable(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.reply_error(500, headers={"Retry-After": "2"})
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert info.value.status == 500 and info.value.retryable
    assert info.value.kind == "transient" and info.value.retry_after == 2
    assert "scripted error 500" in str(info.value)


def test_context_length_error_is_context_too_long(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    message = "This model's maximum context length is 8192 tokens."
    llm_server.reply_error(400, {"error": {"message": message, "type": "invalid_request_error"}})
    with pytest.raises(ContextTooLong) as info:
        chat(provider)
    assert info.value.status == 400 and info.value.kind == "context_too_long"
    assert not info.value.retryable


def test_stream_dropped_mid_answer_is_transient(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.push(Script(text="this answer never finishes, sadly", drop_after=3))
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert info.value.retryable and info.value.kind == "transient"
    assert "[DONE]" in str(info.value)
    llm_server.reply("second try")  # the provider is still usable afterwards
    assert chat(provider).content == "second try"


def test_disconnect_before_answer_is_transient(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.push(Script(disconnect=True))
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert info.value.retryable and info.value.kind == "transient"


def test_registry_passes_stream_through(llm_server: LLMServer) -> None:
    config = config_for(llm_server, redis_url="")
    built = build_proxy(config.providers.proxy)
    assert isinstance(built, OpenAICompatProvider) and built.stream
    built.close()
    plain = Config.model_validate({"providers": {"proxy": {"api_base": llm_server.base_url}}})
    built = build_proxy(plain.providers.proxy)
    assert isinstance(built, OpenAICompatProvider) and not built.stream
    built.close()


# -- through the agent ---------------------------------------------------------------------


def config_for(llm_server: LLMServer, redis_url: str) -> Config:
    proxy = {"api_base": llm_server.base_url, "models": ["test-model"], "stream": True}
    data: dict = {"providers": {"proxy": proxy}}
    if redis_url:
        data["redis"] = {"url": redis_url}
    return Config.model_validate(data)


def msg(text: str) -> InboundMessage:
    return InboundMessage(channel="test", chat_id="42", sender_id="u1", text=text)


def test_agent_tool_round_trip_streamed(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer
) -> None:
    client: redis.Redis = redis_server.client()
    llm_server.reply_tool_call("write_file", {"path": "out/hello.txt", "content": "hi there"})
    llm_server.reply("I wrote the file.")
    agent = Agent(config_for(llm_server, redis_server.url), client)

    reply = agent.handle(msg("please write hello.txt"))

    assert reply.text == "I wrote the file." and reply.tool_steps == 1 and reply.llm_calls == 2
    assert reply.usage.get("total_tokens", 0) > 0
    assert (claw_home.workspace / "out" / "hello.txt").read_text() == "hi there"
    first, second = llm_server.requests
    assert first["stream"] is True and second["stream"] is True
    assistant, tool_result = second["messages"][-2:]
    call = assistant["tool_calls"][0]
    assert call["function"]["name"] == "write_file"
    assert tool_result["tool_call_id"] == call["id"]
    assert tool_result["content"] == "Wrote 8 bytes to out/hello.txt"


def test_stop_abandons_a_slow_stream(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer
) -> None:
    client: redis.Redis = redis_server.client()
    # ~10 chunks 0.3 s apart: the whole answer would take ~3 s.
    llm_server.push(Script(text="x" * 64, chunk_delay=0.3))
    agent = Agent(config_for(llm_server, redis_server.url), client)
    started = time.monotonic()
    stop_at = started + 0.3

    reply = agent.handle(msg("slow please"), should_stop=lambda: time.monotonic() >= stop_at)

    elapsed = time.monotonic() - started
    assert reply.cancelled and reply.text == ""
    assert elapsed < 1.5, f"the streamed call was not abandoned quickly ({elapsed:.2f} s)"
    assert llm_server.requests[0]["stream"] is True
