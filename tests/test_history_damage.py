"""A session history damaged in Redis: a tool exchange that lost its call or a result."""

from __future__ import annotations

import json
from typing import Any

import pytest

from claw_worker import constants as k
from claw_worker.agent import Agent
from claw_worker.agent.history import History
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

SESSION = "test:1"
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "memory_search", "arguments": "{}"}},
    ],
}  # fmt: skip
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "nothing found"}
DAMAGED = {
    # Each was refused by the API with a 400 (or crashed the request): the message failed,
    # and so did every later message of the session, since the history stayed as it was.
    "the call not JSON": ["{not json", json.dumps(RESULT)],
    "the result not JSON": [json.dumps(CALL), "{not json"],
    "the calls not a list": [json.dumps({**CALL, "tool_calls": "nope"}), json.dumps(RESULT)],
    "a call without a name": [
        json.dumps({**CALL, "tool_calls": [{"id": "call_1", "function": {}}]}),
        json.dumps(RESULT),
    ],
    "a result for another call": [json.dumps(CALL), json.dumps({**RESULT, "tool_call_id": "x"})],
    "content not text": [json.dumps({"role": "user", "content": {"a": 1}})],
    "an unknown role": [json.dumps({"role": "bogus", "content": "x"})],
}


def _config(llm_server: LLMServer, redis_server: RedisServer) -> Config:
    return Config.model_validate(
        {
            "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["test-model"]}},
            "redis": {"url": redis_server.url},
        }
    )


@pytest.mark.parametrize("entries", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_tool_exchange_is_left_out_and_the_session_goes_on(
    claw_home: Any, redis_server: RedisServer, llm_server: LLMServer, entries: list[str]
) -> None:
    client = redis_server.client()
    earlier = [json.dumps({"role": "user", "content": "earlier"})]
    after = [json.dumps({"role": "assistant", "content": "earlier answer"})]
    client.rpush(k.history_key(SESSION), *earlier, *entries, *after)
    agent = Agent(_config(llm_server, redis_server), client)

    reply = agent.handle(InboundMessage(channel="test", chat_id="1", text="hello again"))

    assert reply.text and not reply.text.startswith("Error")
    sent = llm_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in sent[1:]] == ["earlier", "earlier answer", "hello again"]


def test_a_whole_exchange_is_kept(redis_server: RedisServer) -> None:
    history = History(redis_server.client(), SESSION)
    turn = [{"role": "user", "content": "look it up"}, CALL, RESULT,
            {"role": "assistant", "content": "found nothing"}]  # fmt: skip
    history.append(turn)
    assert history.load() == turn
    assert history.load_all() == (turn, 4)
