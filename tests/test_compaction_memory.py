"""Compaction when its facts cannot be written to memory."""

from __future__ import annotations

import os

import redis

from claw_worker.agent import Agent
from claw_worker.memory import store
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer
from tests.test_compaction import SUMMARY, make_config, msg, seed


def test_facts_that_cannot_be_saved_go_into_the_summary(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer
) -> None:
    # Today's note is a FIFO (the agent's exec made it): before, the facts' append raised,
    # so every compaction of the day failed and the history only grew, until the provider
    # refused it as too long on every message.
    note = store.layer_path(claw_home.workspace, "note")
    note.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(note)
    client: redis.Redis = redis_server.client()
    config = make_config(llm_server, redis_server, trigger_messages=10, keep_recent_messages=4)
    history = seed(client, 6)  # 24 messages
    llm_server.reply(SUMMARY)

    reply = Agent(config, client).handle(msg("next question"))

    assert reply.text == "echo: next question"
    stored, _ = history.load_all()
    assert len(stored) == 1 + 4 + 2  # compacted: summary + kept + this turn
    head = stored[0]["content"]
    assert "planned a trip" in head
    assert "The user's cat is named Miso" in head and "staging first" in head
    assert not os.path.isfile(note)  # the FIFO was left alone, not written through
