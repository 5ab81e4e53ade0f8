"""A turn made too long by its own tool results: they are cut (claw_worker/agent/shrink.py),
against a real redis-server and the scripted loopback LLM refusing requests over a size."""

from __future__ import annotations

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.agent.history import History
from claw_worker.providers.base import ContextTooLong
from claw_worker.workspace import make_workspace
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer
from tests.llm_wire import request_chars
from tests.test_compaction import SESSION, SUMMARY, assert_tool_pairs_intact, make_config, msg, seed

NOTE = "characters left out; run the tool again with a narrower request if needed]"
BIG = 15_000  # each result: under tools.max_output_chars (16000), together over the limit
# Over the requests without the results: one uncut result alone is too long, both cut fit.
ROOM = 9_000


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


def two_big_reads(claw_home: ClawHome) -> llm.Script:
    """One answer asking for two large outputs: an exec that also logs that it ran, and a
    read_file."""
    make_workspace(claw_home.workspace)
    (claw_home.workspace / "a.txt").write_text("a" * BIG)
    (claw_home.workspace / "b.txt").write_text("b" * BIG)
    return llm.tool_calls(
        [
            ("exec", {"command": "echo ran >> ran.log && cat a.txt"}),
            ("read_file", {"path": "b.txt"}),
        ]
    )


def limit_after_warm_up(agent: Agent, llm_server: LLMServer) -> int:
    """A first message sets the session up (and measures a request without big results); the
    server then refuses requests over that size plus ``ROOM``."""
    assert agent.handle(msg("hello")).text == "echo: hello"
    limit = request_chars(llm_server.requests[-1]) + ROOM
    llm_server.max_context_chars = limit
    return limit


def test_a_turn_too_long_for_its_own_tool_results_cuts_them_and_goes_on(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # Before, compacting the older history could not shrink this turn's own results: the
    # second refusal failed the message, unsaved, after its tool calls had run (the retried
    # message ran them all again, and hit the same wall).
    config = make_config(llm_server, redis_server, trigger_messages=500, keep_recent_messages=4)
    history = seed(client, 6)
    agent = Agent(config, client)
    limit = limit_after_warm_up(agent, llm_server)
    first = len(llm_server.requests)
    llm_server.push(two_big_reads(claw_home), llm.text(SUMMARY), llm.text("read both"))

    reply = agent.handle(msg("read the two files"))

    assert reply.text == "read both" and reply.tool_steps == 2
    assert (claw_home.workspace / "ran.log").read_text() == "ran\n"  # ran once, not again
    sent = llm_server.requests[first:]
    # Asked, refused, summarised, refused again (compacted), refused with the oldest result
    # cut, answered with both cut.
    assert [request_chars(r) <= limit for r in sent] == [True, False, True, False, False, True]
    assert "FACTS:" in sent[2]["messages"][0]["content"]
    one_cut = sent[4]["messages"][-2:]
    assert NOTE in one_cut[0]["content"] and one_cut[1]["content"] == "b" * BIG
    *_, call, exec_result, read_result = sent[-1]["messages"]
    assert [c["id"] for c in call["tool_calls"]] == [
        exec_result["tool_call_id"],
        read_result["tool_call_id"],
    ]
    for result, char in ((exec_result, "a"), (read_result, "b")):
        head, note = result["content"].split("\n", 1)
        assert head == char * 1000 and note.startswith("[output cut to fit the model's context")
        assert NOTE in note and len(result["content"]) < 1200

    stored, _ = history.load_all()
    assert_tool_pairs_intact(stored)
    assert [m["role"] for m in stored[-5:]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert all(NOTE in m["content"] for m in stored[-3:-1])  # saved cut: no wall next time
    assert agent.handle(msg("and now?")).text == "echo: and now?"
    assert request_chars(llm_server.requests[-1]) <= limit


def test_a_turn_still_too_long_with_its_results_cut_fails_clearly(
    claw_home: ClawHome, redis_server: RedisServer, client: redis.Redis, llm_server: LLMServer
) -> None:
    # A new session (nothing older to fold) and a window too small even for the cut results:
    # a bounded number of retries, no tool run twice, then an error saying what was tried;
    # nothing of the turn is saved.
    agent = Agent(make_config(llm_server, redis_server), client)
    llm_server.max_context_chars = 2_000  # the question fits, two cut results do not
    llm_server.push(two_big_reads(claw_home), llm.text("never answered"))

    with pytest.raises(ContextTooLong, match="tool results cut to 1000 characters each"):
        agent.handle(msg("read the two files"))

    assert (claw_home.workspace / "ran.log").read_text() == "ran\n"
    sent = llm_server.requests
    assert len(sent) == 4  # asked; refused: as it was, with the oldest result cut, both cut
    assert all(NOTE in m["content"] for m in sent[-1]["messages"][-2:])
    assert llm_server.pending() == 1
    assert History(client, SESSION).load_all()[0] == []
