"""Each wire protocol (chat completions, Responses, Anthropic Messages) against the
scripted server: text and tool-call round trips, ``<function_call>`` text blocks, and
error bodies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from claw_worker.config.schema import ProxyConfig
from claw_worker.providers import ChatProvider, ContextTooLong, ProviderError
from claw_worker.providers.registry import build_proxy
from tests import llm_server as llm
from tests.fixtures.llm import SAMPLE_TOOLS as TOOLS
from tests.llm_server import LLMServer

PROTOCOLS = ["chat_completions", "responses", "anthropic"]
PATHS = {
    "chat_completions": "/v1/chat/completions",
    "responses": "/v1/responses",
    "anthropic": "/v1/messages",
}
SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "read a.txt please"}


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def provider(llm_server: LLMServer, protocol: str) -> Iterator[ChatProvider]:
    proxy = ProxyConfig(api_base=llm_server.base_url, api_key="sk-proto", protocol=protocol)
    built = build_proxy(proxy)
    assert built is not None
    try:
        yield built
    finally:
        built.close()


def test_text_round_trip(llm_server: LLMServer, provider: ChatProvider, protocol: str) -> None:
    llm_server.reply("Hello back")
    response = provider.chat([SYSTEM, USER], TOOLS, "test-model", 64, 0.3)
    assert (response.content, response.tool_calls, response.finish_reason) == (
        "Hello back",
        [],
        "stop",
    )
    assert response.usage["prompt_tokens"] > 0
    assert llm_server.request_paths == [PATHS[protocol]]
    sent, headers = llm_server.requests[0], llm_server.request_headers[0]
    assert sent["model"] == "test-model"
    if protocol == "chat_completions":
        assert sent["messages"] == [SYSTEM, USER]
        assert headers["authorization"] == "Bearer sk-proto"
    elif protocol == "responses":
        assert sent["instructions"] == "You are terse."
        assert sent["input"] == [{"role": "user", "content": "read a.txt please"}]
        assert sent["tools"][0]["name"] == "read_file" and sent["max_output_tokens"] == 64
        assert headers["authorization"] == "Bearer sk-proto"
    else:
        assert sent["system"] == "You are terse."
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "read a.txt please"}]}
        ]
        assert sent["tools"][0]["input_schema"]["properties"]["path"] == {"type": "string"}
        assert headers["x-api-key"] == "sk-proto" and headers["anthropic-version"]
        assert "authorization" not in headers


def test_tool_call_round_trip(llm_server: LLMServer, provider: ChatProvider, protocol: str) -> None:
    llm_server.push(llm.tool_calls([("read_file", {"path": "a.txt"}), ("list_files", {})]))
    first = provider.chat([SYSTEM, USER], TOOLS, "test-model", 64, 0.3)
    assert first.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in first.tool_calls] == [
        ("read_file", {"path": "a.txt"}),
        ("list_files", {}),
    ]
    # The history the agent builds next, in chat-completions shape, must translate back.
    history = [
        SYSTEM,
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [c.to_message() for c in first.tool_calls],
        },
        *(
            {"role": "tool", "tool_call_id": c.id, "content": f"result {i}"}
            for i, c in enumerate(first.tool_calls)
        ),
    ]
    llm_server.reply("a.txt says hi")
    second = provider.chat(history, TOOLS, "test-model", 64, 0.3)
    assert second.content == "a.txt says hi" and not second.tool_calls
    sent = llm_server.requests[1]
    ids = [c.id for c in first.tool_calls]
    if protocol == "responses":
        kinds = [item.get("type", item.get("role")) for item in sent["input"]]
        assert kinds == ["user", "function_call", "function_call", *["function_call_output"] * 2]
        assert [i["call_id"] for i in sent["input"][1:]] == ids + ids
        assert sent["input"][3]["output"] == "result 0"
    elif protocol == "anthropic":
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["user", "assistant", "user"]  # the two results merged: alternation
        uses = sent["messages"][1]["content"]
        assert [(b["type"], b["id"], b["input"]) for b in uses] == [
            ("tool_use", ids[0], {"path": "a.txt"}),
            ("tool_use", ids[1], {}),
        ]
        results = sent["messages"][2]["content"]
        assert [(b["type"], b["tool_use_id"]) for b in results] == [("tool_result", i) for i in ids]
    else:
        assert [m["role"] for m in sent["messages"]] == [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
        ]


def test_function_call_text_blocks_become_tool_calls(
    llm_server: LLMServer, provider: ChatProvider
) -> None:
    llm_server.reply(
        'Let me look.\n<function_call>{"name": "read_file", "arguments": {"path": "b.md"}}'
        "</function_call>\n<function_call>not json</function_call>"
    )
    response = provider.chat([USER], TOOLS, "test-model", 64, 0.3)
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("read_file", {"path": "b.md"})]
    assert response.finish_reason == "tool_calls"
    # The readable text stays; a block that is not a call is kept rather than lost.
    assert response.content == "Let me look.\n\n<function_call>not json</function_call>"


def test_html_error_page_is_previewed(llm_server: LLMServer, provider: ChatProvider) -> None:
    page = "<html><head><style>p{}</style></head><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    llm_server.reply_error(502, page)
    with pytest.raises(ProviderError) as info:
        provider.chat([USER], None, "test-model", 64, 0.3)
    err = info.value
    assert (err.status, err.kind, err.retryable) == (502, "transient", True)
    assert "HTTP 502" in str(err) and "502 Bad Gateway nginx" in str(err)
    assert "<h1>" not in str(err) and "p{}" not in str(err)


def test_error_kinds(llm_server: LLMServer, provider: ChatProvider) -> None:
    cases = [
        (429, {"error": {"message": "slow down"}}, "rate_limit"),
        (401, {"error": {"message": "bad key"}}, "auth"),
        (404, {"error": {"message": "The model `x` does not exist"}}, "unknown_model"),
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "unknown model: x"}}, "unknown_model"),
        (400, {"error": {"message": "temperature must be <= 2"}}, "invalid_request"),
    ]  # fmt: skip
    for status, body, kind in cases:
        llm_server.reply_error(status, body)
        with pytest.raises(ProviderError) as info:
            provider.chat([USER], None, "x", 64, 0.3)
        assert (info.value.status, info.value.kind) == (status, kind), info.value
        assert not isinstance(info.value, ContextTooLong)


def test_context_too_long_is_distinct(llm_server: LLMServer, provider: ChatProvider) -> None:
    message = "This model's maximum context length is 8192 tokens. Please reduce the length."
    llm_server.reply_error(400, {"error": {"message": message}})
    with pytest.raises(ContextTooLong) as info:
        provider.chat([USER], None, "test-model", 64, 0.3)
    assert info.value.kind == "context_too_long" and info.value.status == 400
