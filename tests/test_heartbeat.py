"""The heartbeat end to end: real beat (RedBeat), worker, ingress and a WebSocket chat, with
the scripted LLM. Heartbeats run every 2 s here (heartbeat.every_sec)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from beat_schedules.heartbeat import open_items
from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.contract import INTERNAL_CHANNEL
from tests.fixtures.procs import wait_for
from tests.llm_server import text
from tests.llm_wire import error

MARK = "## HEARTBEAT.md"  # in every heartbeat message
LONG = "The nightly deploy failed at the migration step; the error log is in deploy.log."
SELFCHECK = "[start-up self-check]"  # the open item makes the start-up check ask too
EVERY_2S = {"agents__defaults__heartbeat__every_sec": 2}


async def recv(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def say(ws: ClientConnection, session: str, words: str) -> dict[str, Any]:
    """Send a message in ``session``; its status frame and then its reply frame."""
    await ws.send(json.dumps({"type": "message", "text": words, "session": session}))
    assert (await recv(ws))["status"] in ("queued", "command")
    return await recv(ws)


def heartbeat_outbound(r: Any) -> list[dict[str, Any]]:
    entries = [json.loads(fields["data"]) for _, fields in r.xrange(k.OUTBOUND_STREAM)]
    return [e for e in entries if e.get("metadata", {}).get("origin") == "heartbeat"]


def heartbeat_fleet(
    fleet_factory: Any, llm_server: Any, claw_home: Any, checklist: str, **overrides: Any
) -> Any:
    """A fleet with a worker (beat not started) heartbeating every 2 s over ``checklist``;
    heartbeats and the start-up check answer HEARTBEAT_OK unless pushed otherwise."""
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    (claw_home.workspace / "HEARTBEAT.md").write_text(checklist)
    llm_server.add_rule(MARK, "HEARTBEAT_OK")
    llm_server.add_rule(SELFCHECK, "HEARTBEAT_OK")
    fleet = fleet_factory(**EVERY_2S, **overrides)
    fleet.start_worker()
    return fleet


def test_what_counts_as_actionable() -> None:
    assert open_items("") == []
    quiet = (
        "# Heartbeat\n\n<!-- - [ ] a note\n on two lines -->\n- [x] done\n* [X] done\n---\n- [ ]\n"
    )
    assert open_items(quiet) == []
    assert open_items("## Today\n- [ ] check the deploy\nwatch the queue\n1. [x] old") == [
        "- [ ] check the deploy",
        "watch the queue",
    ]
    assert open_items("<!-- an unclosed comment\n- [ ] hidden") == []


def test_the_target_is_both_or_neither_and_a_chat_channel() -> None:
    with pytest.raises(ValueError, match="both target_channel and target_chat_id"):
        Config.model_validate({"agents": {"defaults": {"heartbeat": {"target_channel": "ws"}}}})
    with pytest.raises(ValueError, match="a channel that can receive messages"):
        Config.model_validate({"agents": {"defaults": {"heartbeat": {
            "target_channel": "api", "target_chat_id": "x"}}}})  # fmt: skip
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        Config.model_validate({"agents": {"defaults": {"heartbeat": {"every_sec": 1}}}})


def test_nothing_actionable_makes_no_llm_call(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    heartbeat_md = claw_home.workspace / "HEARTBEAT.md"
    heartbeat_md.write_text("# Heartbeat\n\n<!-- - [ ] not an item -->\n- [x] done already\n")
    fleet = fleet_factory(**EVERY_2S)
    fleet.start_worker()
    fleet.start_beat()
    r = redis_server.client()
    wait_for(lambda: int(r.hget(k.HEARTBEAT_STATE, "idle") or 0) >= 2, timeout=30,
             what="two idle heartbeat ticks")  # fmt: skip
    assert r.hget(k.HEARTBEAT_STATE, "detail") == "nothing actionable in HEARTBEAT.md"
    heartbeat_md.unlink()
    wait_for(lambda: r.hget(k.HEARTBEAT_STATE, "detail") == "no readable HEARTBEAT.md", timeout=30,
             what="a tick without the file")  # fmt: skip
    assert llm_server.requests == []
    assert r.hget(k.SELFCHECK_STATE, "action") == "idle"  # nothing unfinished at start either


def test_ok_is_dropped_and_a_real_reply_reaches_the_last_active_chat(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    (claw_home.workspace / "HEARTBEAT.md").write_text("# Heartbeat\n- [ ] check the deploy\n")
    llm_server.push(text("HEARTBEAT_OK"), text(LONG), when=MARK)
    llm_server.add_rule(MARK, "HEARTBEAT_OK")  # every later heartbeat
    llm_server.add_rule(SELFCHECK, "HEARTBEAT_OK")
    fleet = fleet_factory(**EVERY_2S)
    fleet.start_worker()
    fleet.start_ingress()
    r = redis_server.client()

    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            assert (await say(ws, "hb-chat", "hello"))["text"] == "echo: hello"
            fleet.start_beat()
            # The first heartbeat answers HEARTBEAT_OK: nothing comes; the second's reply does.
            reply = await recv(ws, timeout=60)
            assert reply["type"] == "reply" and reply["session"] == "hb-chat"
            assert reply["text"] == LONG

    asyncio.run(scenario())
    beats = llm_server.requests_for(MARK)
    assert len(beats) >= 2
    first = beats[0]["messages"]
    assert "session: heartbeat:main" in first[0]["content"]
    assert "- [ ] check the deploy" in first[-1]["content"]
    assert first[-1]["content"].startswith("Read HEARTBEAT.md")  # the prompt_template
    assert len(beats[1]["messages"]) <= 2 + 6  # system, minimal history, the heartbeat
    routes = [(o["channel"], o["text"]) for o in heartbeat_outbound(r)]
    assert routes[:2] == [(INTERNAL_CHANNEL, "HEARTBEAT_OK"), ("ws", LONG)]


def test_a_slow_heartbeat_is_not_piled_up_and_a_set_target_gets_the_reply(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    llm_server.push(text(LONG, delay=8), when=MARK)  # four ticks long
    fleet = heartbeat_fleet(fleet_factory, llm_server, claw_home, "- [ ] summarise the queue\n",
                            agents__defaults__heartbeat__target_channel="ws",
                            agents__defaults__heartbeat__target_chat_id="hb-target")  # fmt: skip
    fleet.start_ingress()
    r = redis_server.client()

    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await say(ws, "hb-target", "first")
            await say(ws, "hb-last", "the last active chat")  # not where heartbeats go here
            fleet.start_beat()
            await asyncio.to_thread(
                wait_for, lambda: int(r.hget(k.HEARTBEAT_STATE, "busy") or 0) >= 2,
                timeout=30, what="two ticks while the heartbeat runs",
            )  # fmt: skip
            assert len(llm_server.requests_for(MARK)) == 1  # the slow one, still running
            assert r.hget(k.HEARTBEAT_STATE, "submitted") == "1"
            reply = await recv(ws, timeout=30)
            assert (reply["session"], reply["text"]) == ("hb-target", LONG)

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 60


def test_heartbeats_never_compact_their_session(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    """A heartbeat reads only the last few messages of its session, so summarising its older
    turns is an LLM call for nothing (and its summary went into every later heartbeat, its
    facts into memory). Before: with a long checklist, from the 11th heartbeat on (over 20
    messages and 20,000 characters) each one made a summary call as well."""
    checklist = "".join(f"- [ ] check service {n:04d} and its queue\n" for n in range(220))
    fleet = heartbeat_fleet(fleet_factory, llm_server, claw_home, checklist)  # ~8,000 chars
    fleet.start_beat()
    r = redis_server.client()
    looks = wait_for(lambda: len(llm_server.requests_for(MARK)) >= 14 and
                     llm_server.requests_for(MARK), timeout=90, what="14 heartbeats")  # fmt: skip
    summaries = [x for x in looks if "session: heartbeat:main" not in x["messages"][0]["content"]]
    assert summaries == [], f"{len(summaries)} summary call(s) in {len(looks)}"
    assert r.llen(k.history_key("heartbeat:main")) <= 6  # no more kept than a look reads


REVOKED = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                     "code": "invalid_api_key"}}  # fmt: skip


def test_a_heartbeat_failing_tick_after_tick_is_told_once(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    """A provider refusing every call (a revoked key): before, each heartbeat's failure went
    to the chat, one message per tick for as long as it lasted. Now the first failure of a
    streak is delivered; the rest are recorded only, until a heartbeat succeeds."""
    revoked = error(401, REVOKED)
    # Two failures in a row, a success, two more (three would open the provider's breaker).
    llm_server.push(revoked, revoked, text(LONG), revoked, revoked, when=MARK)
    fleet = heartbeat_fleet(fleet_factory, llm_server, claw_home, "- [ ] check the deploy\n",
                            agents__defaults__heartbeat__target_channel="ws",
                            agents__defaults__heartbeat__target_chat_id="ops")  # fmt: skip
    fleet.start_beat()
    r = redis_server.client()
    sent = wait_for(lambda: len(found := heartbeat_outbound(r)) >= 5 and found, timeout=60,
                    what="five heartbeats")  # fmt: skip
    told = [o["text"] for o in sent[:5] if o["channel"] == "ws"]
    assert len(told) == 3, told  # before: all five
    assert "Incorrect API key" in told[0] and told[1] == LONG and "Incorrect API key" in told[2]
    assert [o["channel"] for o in sent[:5]].count(INTERNAL_CHANNEL) == 2
