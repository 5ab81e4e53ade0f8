"""The OpenAI-compatible provider against the scripted loopback LLM server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from claw_worker.config.schema import Config
from claw_worker.providers import (
    FailoverProvider,
    LLMResponse,
    OpenAICompatProvider,
    ProviderError,
    build_provider,
    resolve_model,
)
from tests import llm_server as llm
from tests.fixtures.llm import SAMPLE_MESSAGES as MESSAGES
from tests.fixtures.llm import SAMPLE_TOOLS as TOOLS
from tests.fixtures.procs import free_port, stop_process, wait_for
from tests.llm_server import LLMServer


@pytest.fixture
def provider(llm_server: LLMServer) -> Iterator[OpenAICompatProvider]:
    p = OpenAICompatProvider(llm_server.base_url, "sk-test", timeout_sec=10)
    try:
        yield p
    finally:
        p.close()


def chat(provider: OpenAICompatProvider, messages: list[dict] | None = None) -> LLMResponse:
    return provider.chat(messages or MESSAGES, TOOLS, "test-model", 256, 0.2)


def test_text_reply(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.reply("Hi!")
    response = chat(provider)
    assert response.content == "Hi!"
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.usage["total_tokens"] > 0
    sent = llm_server.requests[0]
    assert sent["model"] == "test-model"
    assert sent["messages"] == MESSAGES
    assert sent["max_tokens"] == 256
    assert sent["tools"] == TOOLS
    assert llm_server.request_headers[0]["authorization"] == "Bearer sk-test"


def test_default_is_echo(provider: OpenAICompatProvider) -> None:
    assert chat(provider).content == "echo: hello there"


def test_tool_calls_parsed(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.push(llm.tool_calls([("read_file", {"path": "a.txt"}), ("exec", {"command": "ls"})]))
    response = chat(provider)
    assert response.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in response.tool_calls] == [
        ("read_file", {"path": "a.txt"}),
        ("exec", {"command": "ls"}),
    ]
    assert all(c.id.startswith("call_") and c.arguments_error is None for c in response.tool_calls)
    assert json.loads(response.tool_calls[0].raw_arguments) == {"path": "a.txt"}


def test_bad_tool_arguments_do_not_crash(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.reply_tool_call("read_file", '{"path": "a.txt"')  # cut-off JSON
    call = chat(provider).tool_calls[0]
    assert call.name == "read_file"
    assert call.arguments == {}
    assert call.raw_arguments == '{"path": "a.txt"'
    assert call.arguments_error is not None and "not valid JSON" in call.arguments_error


def test_http_500_json_is_retryable(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.reply_error(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert info.value.status == 500
    assert info.value.retryable is True
    assert "HTTP 500" in str(info.value) and "upstream exploded" in str(info.value)


def test_html_error_page_names_status_and_previews_body(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>"
        "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx/1.25</center>"
        "</body></html>"
    )
    llm_server.reply_error(502, page)
    with pytest.raises(ProviderError) as info:
        chat(provider)
    message = str(info.value)
    assert "HTTP 502" in message
    assert "non-JSON body (text/html)" in message
    assert "502 Bad Gateway" in message and "nginx/1.25" in message
    assert "<" not in message.split("non-JSON body")[1] and "color:red" not in message
    assert info.value.retryable is True


def test_401_not_retryable(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.reply_error(401, {"error": {"message": "Incorrect API key provided"}})
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert info.value.status == 401
    assert info.value.retryable is False
    assert "Incorrect API key" in str(info.value)


def test_429_retry_after(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.reply_error(429, None, headers={"Retry-After": "7"})
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert (info.value.status, info.value.retryable, info.value.retry_after) == (429, True, 7.0)


def test_connection_refused_is_retryable() -> None:
    provider = OpenAICompatProvider(f"http://127.0.0.1:{free_port()}/v1", timeout_sec=5)
    with pytest.raises(ProviderError) as info:
        chat(provider)
    provider.close()
    assert info.value.status is None and info.value.retryable is True


def test_dropped_connection_is_retryable(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    llm_server.push(llm.Script(disconnect=True))
    with pytest.raises(ProviderError) as info:
        chat(provider)
    assert info.value.retryable is True


def test_keyed_scripts_serve_concurrent_sessions(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    for n in range(20):
        llm_server.reply(f"first {n}", when=f"[s{n}]", delay=0.05)
        llm_server.reply(f"second {n}", when=f"[s{n}]")

    def session(n: int) -> list[str]:
        msgs = [{"role": "user", "content": f"hi [s{n}]"}]
        return [chat(provider, msgs).content for _ in range(2)]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(session, range(20)))
    assert results == [[f"first {n}", f"second {n}"] for n in range(20)]
    assert len(llm_server.requests) == 40
    assert llm_server.pending() == 0


def test_two_hundred_concurrent_calls(
    llm_server: LLMServer, provider: OpenAICompatProvider
) -> None:
    """As a worker's 200 threads would call it: one provider, every call answered right."""
    llm_server.default_delay = 0.3

    def call(n: int) -> str:
        return chat(provider, [{"role": "user", "content": f"n{n}"}]).content

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(call, range(400)))
    assert results == [f"echo: n{n}" for n in range(400)]
    assert len(llm_server.requests) == 400
    assert llm_server.peak_concurrency > 50
    assert llm_server.in_flight == 0


def test_rules_and_models(llm_server: LLMServer, provider: OpenAICompatProvider) -> None:
    llm_server.add_rule("weather", "sunny")
    assert chat(provider, [{"role": "user", "content": "weather?"}]).content == "sunny"
    assert chat(provider, [{"role": "user", "content": "weather again"}]).content == "sunny"
    models = httpx.get(f"{llm_server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["test-model", "test-model-mini"]


def test_server_speaks_the_official_client_wire_format(llm_server: LLMServer) -> None:
    """The real ``openai`` client parses what the server sends, streamed or not."""
    client = openai.OpenAI(base_url=llm_server.base_url, api_key="sk-test")
    llm_server.reply_tool_call("read_file", {"path": "x"})
    completion = client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.tool_calls[0].function.name == "read_file"  # type: ignore[index,union-attr]
    llm_server.reply("streamed reply text")
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "streamed reply text"
    )
    llm_server.reply_tool_call("read_file", {"path": "long/path/name.txt"})
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index,union-attr]
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"path": "long/path/name.txt"}
    client.close()


def test_registry(claw_home: object, monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_provider(Config()) is None
    config = Config.model_validate(
        {"providers": {"proxy": {"api_base": "http://127.0.0.1:1/v1", "models": ["a", "b"]}}}
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    provider = build_provider(config)
    assert isinstance(provider, FailoverProvider)
    assert [(r.name, r.models) for r in provider.routes] == [("proxy", ("a", "b"))]
    assert isinstance(provider.routes[0].provider, OpenAICompatProvider)
    provider.close()
    assert resolve_model(config) == "a"
    override = config.model_copy(
        update={"agents": Config.model_validate({"agents": {"defaults": {"model": "c"}}}).agents}
    )
    assert resolve_model(override) == "c"


def test_standalone_server_process() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.llm_server", "--port", str(port), "--delay", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/v1/models").status_code == 200, what="llm_server")
        script = llm.script_to_dict(llm.text("scripted over HTTP"))
        httpx.post(f"{base}/_control/push", json={"scripts": [script]}).raise_for_status()
        provider = OpenAICompatProvider(f"{base}/v1")
        assert chat(provider).content == "scripted over HTTP"
        assert chat(provider).content == "echo: hello there"
        provider.close()
        assert len(httpx.get(f"{base}/_control/requests").json()["requests"]) == 2
        assert httpx.get(f"{base}/_control/stats").json()["requests"] == 2
    finally:
        stop_process(proc)
    out, err = proc.communicate()
    assert proc.returncode == 0
    assert out == b"" and err == b""
