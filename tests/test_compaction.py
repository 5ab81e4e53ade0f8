"""Context compaction against a real redis-server and the scripted loopback LLM."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.agent.compaction import parse_summary, split_point
from claw_worker.agent.history import History
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.memory import store
from claw_worker.memory.index import MemoryIndex
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

SESSION = "test:42"
SUMMARY = (
    "SUMMARY: The user planned a trip and asked for weather checks.\n\n"
    "FACTS:\n- The user's cat is named Miso\n- Deploys always go through staging first\n"
)

Message = dict[str, Any]


def make_config(
    llm_server: LLMServer,
    redis_server: RedisServer,
    *,
    defaults: dict[str, Any] | None = None,
    **compaction: Any,
) -> Config:
    return Config.model_validate(
        {
            "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["test-model"]}},
            "redis": {"url": redis_server.url},
            "agents": {"defaults": {**(defaults or {}), "context_compaction": compaction}},
        }
    )


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


def msg(text: str) -> InboundMessage:
    return InboundMessage(channel="test", chat_id="42", sender_id="u1", text=text)


def tool_turn(i: int, content: str = "") -> list[Message]:
    call = {"id": f"call_{i}", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}  # fmt: skip
    return [
        {"role": "user", "content": f"question {i} {content}"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": f"result {i}"},
        {"role": "assistant", "content": f"answer {i}"},
    ]


def seed(client: redis.Redis, turns: int, content: str = "") -> History:
    history = History(client, SESSION)
    for i in range(turns):
        history.append(tool_turn(i, content))
    return history


def assert_tool_pairs_intact(messages: list[Message]) -> None:
    """Every tool result follows the assistant message that asked for it."""
    open_ids: set[str] = set()
    for m in messages:
        if m["role"] == "assistant":
            open_ids = {c["id"] for c in m.get("tool_calls") or []}
        elif m["role"] == "tool":
            assert m["tool_call_id"] in open_ids, f"orphan tool result {m}"
        else:
            open_ids = set()


def test_summary_mode_compacts_history(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = make_config(llm_server, redis_server, trigger_messages=10, keep_recent_messages=4)
    history = seed(client, 6)  # 24 messages
    llm_server.reply(SUMMARY)

    reply = Agent(config, client).handle(msg("next question"))

    assert reply.text == "echo: next question"
    summariser, turn = llm_server.requests
    assert "tools" not in summariser
    assert "FACTS:" in summariser["messages"][0]["content"]
    assert "question 0" in summariser["messages"][1]["content"]
    assert "question 5" not in summariser["messages"][1]["content"]  # kept verbatim instead
    # A fresh Agent (a just-started worker): its first compaction of a session is a startup one.
    note = config.agents.defaults.texts.startup_compaction_note % (20, 4)
    system = turn["messages"][0]
    assert note in system["content"] and "planned a trip" in system["content"]
    assert [m["role"] for m in turn["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user",
    ]  # fmt: skip
    assert turn["messages"][1]["content"].startswith("question 5")

    stored, _ = history.load_all()
    assert len(stored) == 1 + 4 + 2  # summary + kept + this turn
    assert stored[0]["role"] == "system" and stored[0]["content"].startswith(note)
    assert_tool_pairs_intact(stored)
    # The facts outlive the summary: they are in today's dated note, and searchable.
    text = store.layer_path(claw_home.workspace, "note").read_text()
    assert "The user's cat is named Miso" in text and "staging first" in text
    assert (
        MemoryIndex(claw_home.workspace).search("cat name", 1)[0].path.startswith("memory/notes/")
    )


def test_a_tool_call_is_never_separated_from_its_result(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # One long turn: no user message to cut at, so the cut must land on the tool call.
    history = History(client, SESSION)
    history.append([{"role": "user", "content": "do many things"}])
    for i in range(7):
        history.append(tool_turn(i)[1:3])
    history.append([{"role": "assistant", "content": "all done"}])  # 16 messages
    config = make_config(llm_server, redis_server, trigger_messages=10, keep_recent_messages=4)
    llm_server.reply(SUMMARY)

    Agent(config, client).handle(msg("thanks"))

    stored, _ = history.load_all()
    assert stored[0]["role"] == "system" and stored[1]["role"] == "assistant"
    assert stored[1]["tool_calls"][0]["id"] == "call_5"  # cut moved back from the tool result
    assert_tool_pairs_intact(stored)
    sent = llm_server.requests[-1]["messages"]
    assert [m["role"] for m in sent[:3]] == ["system", "assistant", "tool"]
    assert_tool_pairs_intact(sent)


def test_failed_compaction_keeps_history_and_retries(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = make_config(llm_server, redis_server, trigger_messages=10, keep_recent_messages=4)
    history = seed(client, 4)  # 16 messages
    original, _ = history.load_all()
    agent = Agent(config, client)

    llm_server.push(llm.error(500))
    assert agent.handle(msg("first")).text == "echo: first"  # the turn itself still works
    stored, _ = history.load_all()
    assert stored[:16] == original and len(stored) == 18

    llm_server.reply("   ")  # an empty summary is a failure too
    agent.handle(msg("second"))
    stored, _ = history.load_all()
    assert stored[:16] == original and len(stored) == 20
    assert not store.layer_path(claw_home.workspace, "note").exists()

    llm_server.reply(SUMMARY)
    agent.handle(msg("third"))
    stored, _ = history.load_all()
    assert stored[0]["role"] == "system" and len(stored) == 1 + 4 + 2
    contents = [m["content"] for m in stored[1:]]
    assert contents == ["first", "echo: first", "second", "echo: second", "third", "echo: third"]


def test_trigger_on_transcript_chars(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = make_config(
        llm_server, redis_server, trigger_messages=60, keep_recent_messages=4,
        max_transcript_chars=1000,
    )  # fmt: skip
    history = seed(client, 3, content="x" * 400)  # 12 messages, ~1200 chars
    llm_server.reply(SUMMARY)
    Agent(config, client).handle(msg("go"))
    stored, _ = history.load_all()
    assert stored[0]["role"] == "system" and "planned a trip" in stored[0]["content"]
    assert len(stored) == 1 + 4 + 2

    # Under both limits nothing is summarised.
    llm_server.reset()
    Agent(config, client).handle(msg("again"))
    assert len(llm_server.requests) == 1


def test_responses_compact_falls_back_to_summary(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = make_config(
        llm_server, redis_server, mode="hybrid", trigger_messages=10, keep_recent_messages=4
    )
    history = seed(client, 4)
    llm_server.reply(SUMMARY)
    Agent(config, client).handle(msg("go"))
    assert history.load_all()[0][0]["role"] == "system"


def test_split_point_and_parse() -> None:
    turn = tool_turn(1)
    messages = [turn[0], *turn[1:3], *turn[1:3], turn[3]]  # user, a, t, a, t, a
    assert split_point(messages, 2) == 3  # would start at a tool result: moved to its call
    assert split_point(messages, 1) == 5
    assert split_point([*messages, *tool_turn(2)], 3) == 6  # a user message is preferred
    assert parse_summary("**SUMMARY:** s\n**FACTS:**\n- none\n", 100) == ("s", [])
    assert parse_summary("just text", 4) == ("jus…", [])


def test_replace_refuses_when_history_changed(client: redis.Redis) -> None:
    history = History(client, "test:replace")
    history.append(tool_turn(1))
    assert not history.replace([{"role": "user", "content": "x"}], expect_len=3)
    assert len(history) == 4
    assert history.replace([{"role": "user", "content": "x"}], expect_len=4)
    assert history.load() == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("turns", "content", "keep"),
    [(6, "", 4), (3, "log line " * 300, 20)],
    ids=["more-than-kept", "fewer-than-kept"],
)
def test_context_too_long_compacts_then_retries_once(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer,
    turns: int, content: str, keep: int,
) -> None:  # fmt: skip
    # Thresholds far above the history: only the provider's refusal triggers compaction.
    # fewer-than-kept: a small context window (a local model) and large tool outputs, the
    # history shorter than keep_recent_messages. Before, the forced compaction found nothing
    # to fold and the message failed; the failed turn changed nothing, so every later
    # message of the session failed the same way. Now all but the last turn are folded.
    config = make_config(llm_server, redis_server, trigger_messages=500, keep_recent_messages=keep)
    history = seed(client, turns, content)
    too_long = {"error": {"message": "This model's maximum context length is 8192 tokens",
                          "code": "context_length_exceeded"}}  # fmt: skip
    llm_server.reply_error(400, too_long)
    llm_server.reply(SUMMARY)

    reply = Agent(config, client).handle(msg("after the refusal"))

    assert reply.text == "echo: after the refusal"
    refused, summariser, retried = llm_server.requests
    assert len(refused["messages"]) == 1 + 4 * turns + 1
    assert "FACTS:" in summariser["messages"][0]["content"]
    assert len(retried["messages"]) == 1 + 4 + 1
    stored, _ = history.load_all()
    assert stored[0]["role"] == "system" and len(stored) == 1 + 4 + 2
    assert stored[1] == tool_turn(turns - 1, content)[0]  # the last turn, verbatim
    assert_tool_pairs_intact(stored)


def test_context_too_long_twice_propagates_and_keeps_history(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    from claw_worker.providers.base import ContextTooLong

    config = make_config(llm_server, redis_server, trigger_messages=500, keep_recent_messages=4)
    seed(client, 6)
    too_long = {"error": {"message": "maximum context length exceeded"}}
    llm_server.reply_error(400, too_long)
    llm_server.reply_error(400, too_long)  # the summariser is refused too: compaction fails
    with pytest.raises(ContextTooLong):
        Agent(config, client).handle(msg("hello"))
    stored, _ = History(client, SESSION).load_all()
    assert len(stored) == 24, "a failed compaction never loses history"


def test_size_trigger_folds_a_history_shorter_than_the_kept_tail(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # Over max_transcript_chars with fewer messages than keep_recent_messages: before, the
    # size trigger fired and folded nothing, so the context grew until the provider refused.
    config = make_config(llm_server, redis_server, max_transcript_chars=1000)
    history = seed(client, 3, content="x" * 400)  # 12 messages, ~1300 chars
    llm_server.reply(SUMMARY)
    Agent(config, client).handle(msg("go"))
    stored, _ = history.load_all()
    assert stored[0]["role"] == "system" and len(stored) == 1 + 4 + 2
    assert_tool_pairs_intact(stored)


def test_lang_preference_reaches_the_system_prompt(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    from claw_worker.constants import lang_key

    config = make_config(llm_server, redis_server)
    client.set(lang_key(SESSION), "zh-CN")
    Agent(config, client).handle(msg("hi"))
    assert "language with code zh-CN" in llm_server.requests[-1]["messages"][0]["content"]


def test_later_compactions_use_the_runtime_note(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = make_config(llm_server, redis_server, trigger_messages=10, keep_recent_messages=4)
    agent = Agent(config, client)
    agent.handle(msg("first turn"))  # short history: no compaction, but the session is seen
    history = History(client, SESSION)
    for i in range(6):
        history.append(tool_turn(i))
    llm_server.reply(SUMMARY)
    agent.handle(msg("after growth"))
    stored, _ = history.load_all()
    texts = config.agents.defaults.texts
    assert stored[0]["content"].startswith(texts.runtime_compaction_note.split("%")[0])
    assert not stored[0]["content"].startswith(texts.startup_compaction_note.split("%")[0])


@pytest.mark.parametrize("with_summary", [False, True], ids=["plain", "summary-head"])
@pytest.mark.parametrize("limit", [3, 5, 8, 30])
def test_load_after_load_all_matches_a_fresh_read(
    client: redis.Redis, with_summary: bool, limit: int
) -> None:
    """After ``load_all`` (the compaction check) a turn's ``load`` cuts its window from that
    snapshot instead of reading again; it must be the window a fresh read gives."""
    history = History(client, "test:window")
    history.clear()
    if with_summary:  # compaction may cut before an assistant tool call: it is kept
        history.append([{"role": "system", "content": "summary of older turns"}])
        history.append(tool_turn(9)[1:])
    for i in range(4):
        history.append(tool_turn(i))
    fresh = History(client, "test:window").load(limit)
    snapshot = History(client, "test:window")
    snapshot.load_all()
    assert snapshot.load(limit) == fresh
    assert not fresh or fresh[0]["role"] in ("system", "user")
    snapshot.append([{"role": "user", "content": "new"}])  # a write drops the snapshot
    assert snapshot.load(limit)[-1]["content"] == "new"


def test_context_too_long_mid_turn_continues_the_turn(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # The refusal comes after a tool call of this turn has run. Before, the turn restarted
    # from the user's message after compaction: the call and its result were dropped from
    # what was sent and saved, so the model would run it again (side effects twice).
    config = make_config(llm_server, redis_server, trigger_messages=500, keep_recent_messages=4)
    history = seed(client, 6)
    llm_server.reply_tool_call("exec", {"command": "echo ran >> ran.log"})
    llm_server.reply_error(400, {"error": {"message": "maximum context length exceeded"}})
    llm_server.reply(SUMMARY)
    llm_server.reply("appended once")

    reply = Agent(config, client).handle(msg("append a line"))

    assert reply.text == "appended once" and reply.tool_steps == 1
    assert (claw_home.workspace / "ran.log").read_text() == "ran\n"
    _, refused, summariser, continued = llm_server.requests
    assert "FACTS:" in summariser["messages"][0]["content"]
    sent = continued["messages"]
    assert [m["role"] for m in sent] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool",
    ]  # fmt: skip
    assert sent[-3]["content"] == "append a line"
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "exec"
    assert sent[-1]["tool_call_id"] == sent[-2]["tool_calls"][0]["id"]
    assert sent[-1] == refused["messages"][-1]  # the same result, not a second run
    stored, _ = history.load_all()
    assert [m["role"] for m in stored[-4:]] == ["user", "assistant", "tool", "assistant"]
    assert stored[-1]["content"] == "appended once"
    assert_tool_pairs_intact(stored)


def test_a_turn_continued_after_compaction_keeps_its_tool_iterations(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # Before, the turn restarted after the refusal with a fresh max_tool_iterations: a model
    # looping on a tool got its iterations again (and ran the calls again).
    config = make_config(
        llm_server, redis_server, trigger_messages=500, keep_recent_messages=4,
        defaults={"max_tool_iterations": 2},
    )  # fmt: skip
    seed(client, 6)
    append = llm.tool_call("exec", {"command": "echo ran >> ran.log"})
    llm_server.push(append, llm.error(400, {"error": {"message": "maximum context length"}}))
    llm_server.reply(SUMMARY)
    llm_server.push(append, append, llm.text("never asked"))

    reply = Agent(config, client).handle(msg("append lines"))

    assert reply.exhausted and reply.llm_calls == 2 and reply.tool_steps == 2
    assert (claw_home.workspace / "ran.log").read_text() == "ran\n" * 2
    assert llm_server.pending() == 2
