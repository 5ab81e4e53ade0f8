"""Native compaction (``responses_compact`` and ``hybrid``) through the Responses API's
``POST /responses/compact`` on the scripted loopback server, with a real redis-server.

The scripted server answers a compaction with the input's user messages and one
``compaction`` item whose opaque ``encrypted_content`` records what it folded in, so the
tests can check the item travels back verbatim on later turns.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.agent.compaction import FACTS_PROMPT
from claw_worker.agent.history import History
from claw_worker.config.schema import Config
from claw_worker.memory import store
from claw_worker.providers.base import COMPACTION
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer
from tests.test_compaction import SESSION, SUMMARY, msg, seed

COMPACT, RESPONSES, CHAT = "/v1/responses/compact", "/v1/responses", "/v1/chat/completions"
TRANSCRIPT_MARK = "USER: question 0"  # only the summariser's transcript contains this


def native_config(
    llm_server: LLMServer, redis_server: RedisServer, mode: str, *, fallback: str = ""
) -> Config:
    providers: dict[str, Any] = {
        "proxy": {
            "api_base": llm_server.base_url,
            "models": ["test-model"],
            "protocol": "responses",
            "supports_responses_compact": True,
        }
    }
    if fallback:
        providers["proxies"] = {"b": {"api_base": fallback, "models": ["fallback-model"]}}
        providers["proxy_fallbacks"] = ["b"]
    compaction = {"mode": mode, "trigger_messages": 10, "keep_recent_messages": 4}
    return Config.model_validate(
        {
            "providers": providers,
            "redis": {"url": redis_server.url},
            "agents": {"defaults": {"context_compaction": compaction}},
        }
    )


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


def requests_to(server: LLMServer, path: str) -> list[dict[str, Any]]:
    return [r for r, p in zip(server.requests, server.request_paths, strict=True) if p == path]


def folded(item: dict[str, Any]) -> dict[str, Any]:
    """What the scripted server wrote into a compaction item's opaque content."""
    assert item["type"] == "compaction"
    return json.loads(base64.b64decode(item["encrypted_content"]))


def test_responses_compact_sends_old_messages_and_replays_the_item(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = native_config(llm_server, redis_server, "responses_compact")
    history = seed(client, 6)  # 24 messages: turns 0-4 are compacted, turn 5 is kept
    llm_server.reply("FACTS:\n- The user's cat is named Miso", when=TRANSCRIPT_MARK)

    reply = Agent(config, client).handle(msg("next question"))

    assert reply.text == "echo: next question"
    assert llm_server.request_paths == [COMPACT, RESPONSES, RESPONSES]
    compact, facts, turn = llm_server.requests
    # The older messages go to the compaction endpoint as Responses input items.
    assert compact["model"] == "test-model"
    users = [i["content"] for i in compact["input"] if i.get("role") == "user"]
    assert users == [f"question {i} " for i in range(5)]
    assert sum(i.get("type") == "function_call_output" for i in compact["input"]) == 5
    # One short call pulls the durable facts out for memory (no summary is asked for).
    assert facts["instructions"] == FACTS_PROMPT and "tools" not in facts
    note = store.layer_path(claw_home.workspace, "note").read_text()
    assert "The user's cat is named Miso" in note

    stored, _ = history.load_all()
    head = stored[0]
    assert head["role"] == "system" and head[COMPACTION]["proxy"] == llm_server.base_url
    items = head[COMPACTION]["items"]
    assert folded(items[-1])["users"] == users
    assert head["content"] == config.agents.defaults.texts.startup_compaction_note % (20, 4)
    assert [m["content"] for m in stored[1:2]] == ["question 5 "]

    # The turn after compaction: the compaction output first, verbatim, then the kept turn.
    sent = turn["input"]
    assert sent[: len(items)] == items
    assert sent[len(items)]["content"] == "question 5 "
    assert sent[-1] == {"role": "user", "content": "next question"}
    assert head["content"] in turn["instructions"]


def test_a_later_compaction_folds_the_earlier_item_in(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = native_config(llm_server, redis_server, "responses_compact")
    history = seed(client, 6)
    agent = Agent(config, client)
    agent.handle(msg("first"))
    first_item = history.load_all()[0][0][COMPACTION]["items"][-1]
    history.append([m for i in range(6, 9) for m in _turn(i)])  # grows past the trigger again
    llm_server.reset()

    agent.handle(msg("second"))

    compact = requests_to(llm_server, COMPACT)[0]
    assert first_item in compact["input"], "the previous compaction item is compacted again"
    head = history.load_all()[0][0]
    assert folded(head[COMPACTION]["items"][-1])["compactions"] == 1
    assert head["content"].startswith("[runtime-compaction]")


def _turn(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"later {i}"}, {"role": "assistant", "content": f"ok {i}"}]


def test_hybrid_keeps_a_readable_summary_for_a_fallback_proxy(
    claw_home: ClawHome,
    redis_server: RedisServer,
    client: redis.Redis,
    llm_server: LLMServer,
    llm_server_b: LLMServer,
) -> None:
    config = native_config(llm_server, redis_server, "hybrid", fallback=llm_server_b.base_url)
    history = seed(client, 6)
    llm_server.reply(SUMMARY, when=TRANSCRIPT_MARK)
    llm_server.reply_error(503, when="next question")  # the turn itself fails over

    reply = Agent(config, client).handle(msg("next question"))

    assert reply.text == "echo: next question"
    assert llm_server.request_paths == [COMPACT, RESPONSES, RESPONSES]
    head = history.load_all()[0][0]
    assert "planned a trip" in head["content"] and head[COMPACTION]["items"]
    # The primary proxy got the item and the summary...
    turn = llm_server.requests[-1]
    assert turn["input"][: len(head[COMPACTION]["items"])] == head[COMPACTION]["items"]
    assert "planned a trip" in turn["instructions"]
    # ...the chat-completions fallback gets plain messages: the summary, never the item.
    (fallback,) = llm_server_b.requests
    assert "planned a trip" in fallback["messages"][0]["content"]
    assert all(
        set(m) <= {"role", "content", "tool_calls", "tool_call_id"} for m in fallback["messages"]
    )
    assert "encrypted_content" not in json.dumps(fallback)


def test_a_failed_native_compaction_keeps_the_history(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = native_config(llm_server, redis_server, "responses_compact")
    history = seed(client, 4)  # 16 messages
    original, _ = history.load_all()
    agent = Agent(config, client)

    llm_server.push(llm.error(500))  # the compaction endpoint fails
    assert agent.handle(msg("first")).text == "echo: first"
    stored, _ = history.load_all()
    assert stored[:16] == original and len(stored) == 18
    assert COMPACT in llm_server.request_paths

    llm_server.reply_error(502, when=TRANSCRIPT_MARK)  # now the facts call fails
    agent.handle(msg("second"))
    stored, _ = history.load_all()
    assert stored[:16] == original and len(stored) == 20, "no facts saved: nothing dropped"

    agent.handle(msg("third"))  # both work: compacted at last
    stored, _ = history.load_all()
    assert COMPACTION in stored[0] and len(stored) == 1 + 4 + 2


def test_native_modes_fall_back_to_summary_without_support(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    config = native_config(llm_server, redis_server, "responses_compact")
    proxy = config.providers.proxy.model_copy(update={"supports_responses_compact": False})
    config = config.model_copy(
        update={"providers": config.providers.model_copy(update={"proxy": proxy})}
    )
    history = seed(client, 6)
    llm_server.reply(SUMMARY, when=TRANSCRIPT_MARK)
    Agent(config, client).handle(msg("go"))
    assert COMPACT not in llm_server.request_paths
    head = history.load_all()[0][0]
    assert "planned a trip" in head["content"] and COMPACTION not in head


def test_a_refused_compaction_item_does_not_break_the_session(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    """An item the endpoint no longer accepts (another organisation's key, say): the turn is
    sent again without it instead of failing every message of the session."""
    config = native_config(llm_server, redis_server, "hybrid", fallback="")
    item = {"type": "compaction", "id": "cmp_old", "encrypted_content": "bm90IG91cnM="}
    head = {
        "role": "system",
        "content": "[runtime-compaction] summary: the user likes tea",
        COMPACTION: {"proxy": llm_server.base_url, "items": [item]},
    }
    History(client, SESSION).append([head])
    refusal = {"error": {"message": "The encrypted content could not be verified.",
                         "type": "invalid_request_error"}}  # fmt: skip
    llm_server.reply_error(400, refusal)

    assert Agent(config, client).handle(msg("still there?")).text == "echo: still there?"
    refused, retried = llm_server.requests
    assert item in refused["input"] and item not in retried["input"]
    assert "likes tea" in retried["instructions"]  # the readable summary is kept
