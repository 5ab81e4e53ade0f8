"""FailoverProvider against two real scripted servers: model and proxy switching by error
kind, the per-proxy circuit breaker (in Redis and in memory), and the final summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from claw_worker import constants
from claw_worker.config.schema import Config
from claw_worker.providers import ContextTooLong, FailoverProvider, ProviderError
from claw_worker.providers.registry import build_provider
from tests import llm_server as llm
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

USER = [{"role": "user", "content": "hello"}]


def make_config(
    a: LLMServer, b: LLMServer | None = None, *, stream: bool = False, **defaults: Any
) -> Config:
    proxy = {"api_base": a.base_url, "api_key": "sk-a", "models": ["m1", "m2"], "stream": stream}
    providers: dict[str, Any] = {"proxy": proxy}
    if b is not None:
        providers["proxies"] = {"b": {"api_base": b.base_url, "api_key": "sk-b", "models": ["b1"]}}
        providers["proxy_fallbacks"] = ["b"]
    return Config.model_validate(
        {"providers": providers, "agents": {"defaults": {"model": "m1", **defaults}}}
    )


@pytest.fixture
def chain(llm_server: LLMServer, llm_server_b: LLMServer) -> Iterator[FailoverProvider]:
    provider = build_provider(make_config(llm_server, llm_server_b))
    assert isinstance(provider, FailoverProvider)
    try:
        yield provider
    finally:
        provider.close()


def ask(provider: FailoverProvider) -> str:
    return provider.chat(USER, None, "m1", 32, 0.2).content


def models(server: LLMServer) -> list[str]:
    return [r["model"] for r in server.requests]


def test_chain_order_from_config(llm_server: LLMServer, llm_server_b: LLMServer) -> None:
    config = make_config(llm_server, llm_server_b, model="m2", model_fallbacks=["f1", "m1"])
    provider = build_provider(config)
    assert isinstance(provider, FailoverProvider)
    assert [(r.name, r.models) for r in provider.routes] == [
        ("proxy", ("m2", "f1", "m1")),
        ("b", ("b1",)),
    ]
    provider.close()


@pytest.mark.parametrize(
    "failure",
    [
        llm.error(429, {"error": {"message": "quota exceeded"}}),
        llm.error(503, {"error": {"message": "overloaded"}}),
        llm.error(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        llm.error(404, {"error": {"message": "model m1 not found"}}),
        llm.error(400, {"error": {"message": "unknown model 'm1'"}}),
    ],
    ids=["429", "503", "502-html", "404-model", "400-model"],
)
def test_next_model_on_the_same_proxy(
    llm_server: LLMServer, llm_server_b: LLMServer, chain: FailoverProvider, failure: llm.Script
) -> None:
    llm_server.push(failure, when_model="m1")
    llm_server.reply("from m2", when_model="m2")
    assert ask(chain) == "from m2"
    assert models(llm_server) == ["m1", "m2"] and llm_server_b.requests == []


def test_short_retry_after_waits_and_retries_the_same_model(
    llm_server: LLMServer, chain: FailoverProvider
) -> None:
    llm_server.reply_error(429, headers={"Retry-After": "0.2"}, when_model="m1")
    llm_server.reply("after waiting", when_model="m1")
    started = time.monotonic()
    assert ask(chain) == "after waiting"
    assert time.monotonic() - started >= 0.2
    assert models(llm_server) == ["m1", "m1"]


def test_long_retry_after_switches_instead(llm_server: LLMServer, chain: FailoverProvider) -> None:
    llm_server.reply_error(429, headers={"Retry-After": "30"}, when_model="m1")
    started = time.monotonic()
    assert ask(chain) == "echo: hello"
    assert time.monotonic() - started < 5
    assert models(llm_server) == ["m1", "m2"]


def test_next_proxy_when_every_model_fails(
    llm_server: LLMServer, llm_server_b: LLMServer, chain: FailoverProvider
) -> None:
    llm_server.add_rule("", llm.error(503))
    llm_server_b.reply("from b")
    assert ask(chain) == "from b"
    assert models(llm_server) == ["m1", "m2"] and models(llm_server_b) == ["b1"]
    assert llm_server_b.request_headers[0]["authorization"] == "Bearer sk-b"


def test_auth_failure_skips_the_rest_of_the_proxy(
    llm_server: LLMServer, llm_server_b: LLMServer, chain: FailoverProvider
) -> None:
    llm_server.add_rule("", llm.error(401, {"error": {"message": "invalid api key"}}))
    assert ask(chain) == "echo: hello"
    assert models(llm_server) == ["m1"] and models(llm_server_b) == ["b1"]


def test_context_too_long_is_raised_without_failover(
    llm_server: LLMServer, llm_server_b: LLMServer, chain: FailoverProvider
) -> None:
    message = "prompt is too long: 210000 tokens > 200000 maximum"
    llm_server.reply_error(400, {"type": "error", "error": {"message": message}})
    with pytest.raises(ContextTooLong):
        ask(chain)
    assert models(llm_server) == ["m1"] and llm_server_b.requests == []


def test_other_client_errors_are_raised(
    llm_server: LLMServer, llm_server_b: LLMServer, chain: FailoverProvider
) -> None:
    llm_server.reply_error(422, {"error": {"message": "messages[0].content is invalid"}})
    with pytest.raises(ProviderError) as info:
        ask(chain)
    assert info.value.status == 422 and info.value.kind == "invalid_request"
    assert llm_server_b.requests == []


# OpenRouter (and proxies like it) report a failure that arises after they accepted the
# request with status 200 and the error in the body; its numeric code is the HTTP status.
CONTEXT_IN_200 = {
    "error": {
        "code": 400,
        "message": "This endpoint's maximum context length is 8192 tokens. However, you "
        "requested about 9100 tokens. Please reduce the length of the messages.",
    }
}
DOWN_IN_200 = {"error": {"code": 502, "message": "upstream provider disconnected"}}
CHOICE_ERROR_IN_200 = {
    "id": "gen-1",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "finish_reason": "error",
            "error": {"code": 502, "message": "provider returned error"},
            "message": {"role": "assistant", "content": ""},
        }
    ],
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream-request"])
def test_an_error_in_a_200_body_is_classified_by_its_code(
    llm_server: LLMServer, llm_server_b: LLMServer, stream: bool
) -> None:
    chain = build_provider(make_config(llm_server, llm_server_b, stream=stream))
    assert isinstance(chain, FailoverProvider)
    try:
        # A context too long: raised for compaction (before: "HTTP 200 without a chat
        # completion", a wrong api_base, so the next model, and the history never compacted).
        llm_server.push(llm.raw_answer(CONTEXT_IN_200), when_model="m1")
        with pytest.raises(ContextTooLong):
            ask(chain)
        assert models(llm_server) == ["m1"] and llm_server_b.requests == []
        # An error in the choice: the next model (before: "" taken for the answer).
        llm_server.push(llm.raw_answer(CHOICE_ERROR_IN_200), when_model="m1")
        llm_server.reply("from m2", when_model="m2")
        assert ask(chain) == "from m2"
        # Every model down: worth asking again later (before: failed at once).
        llm_server.add_rule("", llm.raw_answer(DOWN_IN_200))
        llm_server_b.add_rule("", llm.raw_answer(DOWN_IN_200))
        with pytest.raises(ProviderError) as info:
            ask(chain)
        assert info.value.kind == "transient" and info.value.retryable
        assert "upstream provider disconnected" in str(info.value)
    finally:
        chain.close()


@pytest.mark.parametrize(
    "answer",
    [
        llm.raw_answer({"choices": [{"index": 0, "message": "hi"}]}),
        llm.raw_answer({"choices": [{"message": {"content": "x", "tool_calls": ["read_file"]}}]}),
        llm.raw_answer({"choices": [{"message": {"content": [{"text": 5}]}}]}),
        llm.raw_answer({"choices": [{"message": {"content": "x"}}], "usage": [1, 2]}),
        llm.raw_answer(
            'data: {"choices": [{"index": 0, "delta": "oops"}]}\n\ndata: [DONE]\n\n',
            content_type="text/event-stream",
        ),
    ],
    ids=["message-str", "call-str", "part-int", "usage-list", "stream-delta-str"],
)
def test_an_answer_of_the_wrong_shape_fails_over_to_the_next_model(
    llm_server: LLMServer, llm_server_b: LLMServer, answer: llm.Script
) -> None:
    # Before: AttributeError or TypeError out of the parser, past the failover (no other
    # model tried) and into the run as an unexpected error, with its traceback.
    chain = build_provider(make_config(llm_server, llm_server_b, stream=True))
    assert isinstance(chain, FailoverProvider)
    try:
        llm_server.push(answer, when_model="m1")
        llm_server.reply("from m2", when_model="m2")
        assert ask(chain) == "from m2"
        assert models(llm_server) == ["m1", "m2"]
        # Nothing else answers: a bad response, with what was wrong.
        llm_server.add_rule("", answer)
        llm_server_b.add_rule("", answer)
        with pytest.raises(ProviderError) as info:
            ask(chain)
        assert info.value.kind == "bad_response" and "without a well-formed" in str(info.value)
    finally:
        chain.close()


def test_everything_failing_summarizes_each_attempt(
    llm_server: LLMServer, llm_server_b: LLMServer, chain: FailoverProvider
) -> None:
    llm_server.add_rule("", llm.error(503, {"error": {"message": "a is down"}}))
    llm_server_b.add_rule("", llm.error(502, "<html><h1>bad gateway b</h1></html>"))
    with pytest.raises(ProviderError) as info:
        ask(chain)
    text = str(info.value)
    assert "3 attempts" in text
    assert "proxy/m1: transient" in text and "proxy/m2: transient" in text
    assert "b/b1: transient" in text and "bad gateway b" in text
    assert info.value.retryable and info.value.status == 502


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "memory"])
def test_breaker_opens_skips_and_closes_after_cooldown(
    llm_server: LLMServer, llm_server_b: LLMServer, redis_server: RedisServer, shared: bool
) -> None:
    client: redis.Redis | None = redis_server.client() if shared else None
    config = make_config(llm_server, llm_server_b)
    provider = build_provider(config, client, breaker_threshold=3, cooldown_sec=0.6)
    assert isinstance(provider, FailoverProvider)
    endpoint = provider.routes[0].breaker  # breakers are keyed by endpoint, not by name
    llm_server.add_rule("", llm.error(503))
    for _ in range(3):
        assert ask(provider) == "echo: hello"  # answered by b each time
    assert len(llm_server.requests) == 6
    state = provider.breakers.state(endpoint)
    assert state.failures == 3 and state.is_open()
    if client is not None:  # every host (and clawctl status) sees the same state
        assert client.hget(constants.breaker_key(endpoint), "failures") == "3"

    assert ask(provider) == "echo: hello"
    assert len(llm_server.requests) == 6  # skipped while open
    assert len(llm_server_b.requests) == 4

    llm_server.reset()  # proxy a recovers
    wait_for(lambda: ask(provider) == "echo: hello" and len(llm_server.requests) > 0, timeout=10)
    assert models(llm_server) == ["m1"]  # half-open call succeeded: closed again
    assert provider.breakers.state(endpoint).failures == 0
    if client is not None:
        assert not client.exists(constants.breaker_key(endpoint))
    provider.close()


def test_breaker_reopens_when_the_half_open_call_fails(
    llm_server: LLMServer, llm_server_b: LLMServer
) -> None:
    provider = build_provider(
        make_config(llm_server, llm_server_b), breaker_threshold=2, cooldown_sec=0.3
    )
    assert isinstance(provider, FailoverProvider)
    endpoint = provider.routes[0].breaker
    llm_server.add_rule("", llm.error(503))
    ask(provider)
    ask(provider)
    assert provider.breakers.state(endpoint).is_open()
    wait_for(lambda: not provider.breakers.state(endpoint).is_open(), timeout=10)
    ask(provider)  # the trial call fails: open again at once
    assert provider.breakers.state(endpoint).is_open()
    assert len(llm_server.requests) == 6
    provider.close()


def test_a_breaker_opened_by_another_host_is_seen_within_a_second(
    llm_server: LLMServer, llm_server_b: LLMServer, redis_server: RedisServer
) -> None:
    config = make_config(llm_server, llm_server_b)
    host_a = build_provider(config, redis_server.client(), breaker_threshold=2, cooldown_sec=30)
    host_b = build_provider(config, redis_server.client(), breaker_threshold=2, cooldown_sec=30)
    assert isinstance(host_a, FailoverProvider) and isinstance(host_b, FailoverProvider)
    endpoint = host_a.routes[0].breaker  # the same config: the same endpoint on both hosts
    assert ask(host_a) == "echo: hello" and not host_a.breakers.state(endpoint).is_open()
    for _ in range(2):  # host b's failures open the shared breaker
        host_b.breakers.record_failure(endpoint)
    # Host a re-reads the shared state about a second later (generous deadline: a loaded
    # CI machine) and then skips the proxy.
    wait_for(lambda: host_a.breakers.state(endpoint).is_open(), timeout=5)
    before = len(llm_server.requests)
    assert ask(host_a) == "echo: hello" and len(llm_server.requests) == before
    host_a.close()
    host_b.close()
