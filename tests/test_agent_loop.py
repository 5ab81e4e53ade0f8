"""The agent turn against a real redis-server and the scripted loopback LLM."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from claw_worker import constants
from claw_worker.agent import Agent, AgentReply
from claw_worker.agent.history import History
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.providers import ProviderError
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer


def make_config(
    llm_server: LLMServer | None,
    redis_server: RedisServer,
    *,
    proxy_options: dict[str, Any] | None = None,
    **defaults: Any,
) -> Config:
    proxy = {"api_base": llm_server.base_url, "models": ["test-model"]} if llm_server else {}
    proxy.update(proxy_options or {})
    return Config.model_validate(
        {
            "providers": {"proxy": proxy},
            "redis": {"url": redis_server.url},
            "agents": {"defaults": defaults},
        }
    )


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


def msg(text: str, chat_id: str = "42") -> InboundMessage:
    return InboundMessage(channel="test", chat_id=chat_id, sender_id="u1", text=text)


def test_tool_call_round_trip(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    llm_server.reply_tool_call("write_file", {"path": "out/hello.txt", "content": "hi there"})
    llm_server.reply("I wrote the file.")
    agent = Agent(make_config(llm_server, redis_server), client)

    reply = agent.handle(msg("please write hello.txt"))

    assert reply == AgentReply(
        text="I wrote the file.",
        tool_steps=1,
        llm_calls=2,
        usage=reply.usage,
        transcript_length=4,  # the user's message, the tool call, its result, the answer
    )
    assert (claw_home.workspace / "out" / "hello.txt").read_text() == "hi there"
    first, second = llm_server.requests
    assert {t["function"]["name"] for t in first["tools"]} >= {"write_file", "read_file", "exec"}
    assistant, tool_result = second["messages"][-2:]
    call = assistant["tool_calls"][0]
    assert call["function"]["name"] == "write_file"
    assert tool_result["role"] == "tool"
    assert tool_result["tool_call_id"] == call["id"]
    assert tool_result["content"] == "Wrote 8 bytes to out/hello.txt"


def test_history_persists_across_messages(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = make_config(llm_server, redis_server)
    llm_server.reply_tool_call("list_files", {})
    assert Agent(config, client).handle(msg("first question")).text == "echo: first question"
    # A fresh Agent (as on another worker host) sees the same history through Redis.
    assert Agent(config, client).handle(msg("second question")).text == "echo: second question"

    sent = llm_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["content"] == "first question"
    assert sent[4]["content"] == "echo: first question"
    assert sent[-1]["content"] == "second question"
    stored = [json.loads(x) for x in client.lrange(constants.history_key("test:42"), 0, -1)]
    assert [m["role"] for m in stored] == [
        "user", "assistant", "tool", "assistant", "user", "assistant",
    ]  # fmt: skip
    # Another chat has its own history.
    Agent(config, client).handle(msg("elsewhere", chat_id="7"))
    assert [m["role"] for m in llm_server.requests[-1]["messages"]] == ["system", "user"]


def test_max_tool_iterations(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    llm_server.add_rule("loop forever", llm.tool_call("list_files", {}))
    config = make_config(llm_server, redis_server, max_tool_iterations=3)

    reply = Agent(config, client).handle(msg("loop forever"))

    assert reply.exhausted and reply.llm_calls == 3 and reply.tool_steps == 3
    assert reply.text == config.agents.defaults.texts.tool_iterations_exhausted % 3
    assert len(llm_server.requests) == 3


def test_no_provider_configured(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis
) -> None:
    config = make_config(None, redis_server)
    reply = Agent(config, client).handle(msg("hello"))
    assert reply.text == config.agents.defaults.texts.provider_not_configured
    assert reply.llm_calls == 0
    assert client.llen(constants.history_key("test:42")) == 0


def test_bootstrap_files_in_system_prompt(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    claw_home.workspace.mkdir(parents=True)
    (claw_home.workspace / "AGENTS.md").write_text("Always answer in haiku. MARKER-AGENTS-7731")
    (claw_home.workspace / "USER.md").write_text("The user is called Ada.")
    Agent(make_config(llm_server, redis_server), client).handle(msg("hi"))
    system = llm_server.requests[0]["messages"][0]
    assert system["role"] == "system"
    assert "MARKER-AGENTS-7731" in system["content"]
    assert "The user is called Ada." in system["content"]
    assert "SOUL.md" not in system["content"]  # absent files are skipped
    assert str(claw_home.workspace) in system["content"]


def test_empty_answer_uses_fallback(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    llm_server.reply("   ")
    config = make_config(llm_server, redis_server)
    assert Agent(config, client).handle(msg("hi")).text == (
        config.agents.defaults.texts.no_response_fallback
    )


def test_bad_tool_arguments_go_back_to_the_model(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    llm_server.reply_tool_call("write_file", '{"path": "x.txt", "content": ')
    llm_server.reply_tool_call("no_such_tool", {})
    reply = Agent(make_config(llm_server, redis_server), client).handle(msg("go"))
    assert reply.text == "echo: go" and reply.tool_steps == 2
    results = [m for m in llm_server.requests[-1]["messages"] if m["role"] == "tool"]
    assert results[0]["content"].startswith("Error: invalid arguments for write_file")
    assert results[1]["content"].startswith("Error: unknown tool 'no_such_tool'")


@pytest.mark.parametrize(
    ("protocol", "finish", "stream"),
    [("chat_completions", "length", False), ("chat_completions", "length", True),
     ("anthropic", "max_tokens", False), ("anthropic", "max_tokens", True)],
)  # fmt: skip
def test_a_tool_call_cut_off_at_the_output_limit_is_not_run_and_said_so(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer,
    protocol: str, finish: str, stream: bool,
) -> None:  # fmt: skip
    # The answer ends at max_tokens inside its second call. Before, the cut call was run
    # with what arrived and the model read "arguments are not valid JSON" (or, on Anthropic,
    # "path: Field required"), so it wrote the same large call again until
    # max_tool_iterations; now it is not run and the model reads that it was cut off.
    cut = '{"path": "big.txt", "content": "' + "x" * 200
    calls = [{"name": "write_file", "arguments": {"path": "a.txt", "content": "a"}},
             {"name": "write_file", "arguments": cut}]  # fmt: skip
    llm_server.push(llm.Script(tool_calls=calls, finish_reason=finish))
    options = {"protocol": protocol, "stream": stream}
    config = make_config(llm_server, redis_server, proxy_options=options, max_tokens=300)
    reply = Agent(config, client).handle(msg("write a big file"))
    assert llm_server.requests[0].get("stream", False) is stream
    assert reply.text == "echo: write a big file" and reply.tool_steps == 1
    assert (claw_home.workspace / "a.txt").read_text() == "a"  # complete: run
    assert not (claw_home.workspace / "big.txt").exists()
    stored = History(client, "test:42").load()
    results = [m["content"] for m in stored if m["role"] == "tool"]
    assert results[0] == "Wrote 1 bytes to a.txt"
    assert "cut off at the output-token limit (max_tokens 300)" in results[1]
    assert "smaller" in results[1] and "not valid JSON" not in results[1]


@pytest.mark.parametrize("cap", [None, 3], ids=["default", "configured"])
def test_tool_calls_past_the_cap_of_one_answer_are_not_run(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer,
    cap: int | None,
) -> None:  # fmt: skip
    # One answer asking for 40 calls: before, all ran (each result up to max_output_chars
    # into the next request); now those past the cap are answered "not run" unrun, and
    # every call id still gets its tool message (OpenAI refuses the next request without).
    calls = [("write_file", {"path": f"f{i:02}.txt", "content": "x"}) for i in range(40)]
    llm_server.push(llm.tool_calls(calls))
    control = {} if cap is None else {"tool_max_calls_per_answer": cap}
    config = make_config(llm_server, redis_server, runtime_control=control)
    reply = Agent(config, client).handle(msg("write many files"))
    assert reply.text == "echo: write many files"  # the next request was accepted
    results = [m["content"] for m in llm_server.requests[-1]["messages"] if m["role"] == "tool"]
    ran = [r for r in results if r.startswith("Wrote")]
    assert len(results) == 40
    assert len(ran) == len(list(claw_home.workspace.glob("f*.txt"))) < 40
    limit = config.agents.defaults.runtime_control.tool_max_calls_per_answer
    assert reply.tool_steps == len(ran) == limit and ran == results[:limit]
    assert results[limit].startswith(f"Error: not run: one answer may ask for at most {limit}")
    assert results[-1].endswith("ask for the rest in your next answer.")


def test_a_tool_name_the_api_refuses_does_not_fail_the_turn(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # Names a model may write (in a <function_call> block, or through a loose proxy) that
    # OpenAI refuses in a history: before, the call was replayed as is and the next request
    # was a 400 (invalid_request), failing the message.
    long_name = "read_file" * 30
    llm_server.push(
        llm.tool_calls([("functions.read_file", {"path": "a"}), ("", {}), (long_name, {})])
    )
    agent = Agent(make_config(llm_server, redis_server), client)
    assert agent.handle(msg("go")).text == "echo: go"

    sent = llm_server.requests[-1]["messages"]
    names = [c["function"]["name"] for c in sent[-4]["tool_calls"]]
    assert names == ["functions_read_file", "unnamed_tool", long_name[:64]]
    results = [m["content"] for m in sent[-3:]]
    assert results[0].startswith("Error: unknown tool 'functions.read_file'")
    assert results[1].startswith("Error: unknown tool ''")
    assert results[2].startswith(f"Error: unknown tool '{long_name[:64]}…'")
    # The saved turn is a valid history for the next message.
    assert agent.handle(msg("again")).text == "echo: again"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_half_a_surrogate_pair_from_the_model_is_replaced_not_a_failed_turn(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer,
    stream: bool,
) -> None:  # fmt: skip
    """JSON may carry half of a surrogate pair alone ("\\ud800"); decoded as is, the first
    write (the file, the history in Redis) raised UnicodeEncodeError and the message failed
    after its retries."""
    llm_server.reply_tool_call("write_file", {"path": "cut.txt", "content": "a\ud83d b"})
    llm_server.reply("done \udc00 here, and whole: \U0001f600")
    config = make_config(llm_server, redis_server).model_dump()
    config["providers"]["proxy"]["stream"] = stream
    agent = Agent(Config.model_validate(config), client)
    assert agent.handle(msg("go")).text == "done \ufffd here, and whole: \U0001f600"
    assert (claw_home.workspace / "cut.txt").read_text() == "a\ufffd b"
    assert agent.handle(msg("again")).text == "echo: again"  # the saved turn is readable


def test_provider_error_propagates_and_saves_nothing(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    llm_server.reply_error(503, {"error": {"message": "overloaded"}})
    with pytest.raises(ProviderError) as info:
        Agent(make_config(llm_server, redis_server), client).handle(msg("hi"))
    assert info.value.retryable
    assert client.llen(constants.history_key("test:42")) == 0


def test_should_stop_between_steps(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    llm_server.push(llm.tool_calls([("list_files", {}), ("list_files", {})]))
    calls = iter([False, False, True])  # before the LLM call, before tool 1, before tool 2
    reply = Agent(make_config(llm_server, redis_server), client).handle(
        msg("hi"), should_stop=lambda: next(calls, True)
    )
    assert reply.cancelled and reply.text == "" and reply.tool_steps == 1
    stored = History(client, "test:42").load()
    # Every tool call keeps a result, so the history stays valid for the next request.
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "tool"]
    assert stored[-1]["content"].startswith("Error: not run")


def test_history_is_capped_and_starts_at_a_user_message(client: redis.Redis) -> None:
    history = History(client, "test:cap", max_entries=5)
    history.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    history.append(
        [
            {"role": "user", "content": "c"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "x", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "1", "content": "r"},
            {"role": "assistant", "content": "d"},
        ]
    )
    assert len(history) == 5
    assert [m["content"] for m in history.load()] == ["c", None, "r", "d"]
    assert history.load(limit=2) == []
