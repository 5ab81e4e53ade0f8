"""The start-up self-check end to end: real beat, two workers, the ingress and a WebSocket
chat, with the scripted LLM."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from claw_worker import constants as k
from tests.fixtures.procs import wait_for
from tests.llm_server import text

MARK = "[start-up self-check]"
QUIET = {"agents__defaults__heartbeat__enabled": False}
CONVERSATION = "the last run of this conversation did not finish"
ITEMS = "Below are the open items of HEARTBEAT.md"
NEEDS_YOU = "The release build failed before the restart; shall I run it again?"
ALICE, BOB = "ALICE-LEDGER-7731", "BOB-DIARY-2208"


async def recv(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def say(ws: ClientConnection, session: str, words: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "message", "text": words, "session": session}))
    assert (await recv(ws))["status"] == "queued"
    return await recv(ws)


def test_unfinished_work_is_looked_at_once_with_two_workers(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    (claw_home.workspace / "HEARTBEAT.md").write_text("- [x] old\n- [ ] renew the certificate\n")
    llm_server.reply_error(400, {"error": {"message": "bad tool schema"}}, when="BUILD-REL")
    llm_server.push(text(NEEDS_YOU), when=CONVERSATION)
    llm_server.push(text("HEARTBEAT_OK"), when=ITEMS)
    fleet = fleet_factory(**QUIET)
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.start_ingress()
    r = redis_server.client()

    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            assert (await say(ws, "sc-done", "all fine here"))["text"] == "echo: all fine here"
            failed = await say(ws, "sc-chat", "BUILD-REL build the release")
            assert failed["text"].startswith("Sorry, I could not process your message")
            fleet.start_beat()  # the gateway (re)starts: one self-check
            reply = await recv(ws, timeout=60)
            assert (reply["session"], reply["text"]) == ("sc-chat", NEEDS_YOU)  # its own chat

    asyncio.run(scenario())
    wait_for(lambda: len(llm_server.requests_for(MARK)) == 2, timeout=30, what="both looks")
    [chat] = llm_server.requests_for(CONVERSATION)
    prompt = chat["messages"][-1]["content"]
    assert "- session ws:sc-chat:\n  - run-" in prompt
    assert ' ago): failed, error: "the LLM refused the request' in prompt  # the run's error
    assert "sc-done" not in prompt and "renew the certificate" not in prompt
    assert "session: ws:sc-chat" in chat["messages"][0]["content"]  # in the chat's own session
    [items] = llm_server.requests_for(ITEMS)
    prompt = items["messages"][-1]["content"]
    assert "- [ ] renew the certificate" in prompt and "- [x] old" not in prompt
    assert "sc-chat" not in prompt and "BUILD-REL" not in prompt  # no conversation in it
    assert "session: selfcheck:main" in items["messages"][0]["content"]
    assert r.hget(k.SELFCHECK_STATE, "action") == "submitted"
    time.sleep(4)  # a bounded look: neither worker runs another
    assert len(llm_server.requests_for(MARK)) == 2


def test_each_chat_hears_only_of_its_own_unfinished_work(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    """Two people, each in a chat of their own, each with a request that failed before the
    restart: each chat is asked about, and told of, its own work only (the scripted LLM
    echoes the self-check's message, so a chat's reply shows what was put to the agent)."""
    for marker in ("FAIL-ALICE", "FAIL-BOB"):
        llm_server.reply_error(400, {"error": {"message": "bad tool schema"}}, when=marker)
    fleet = fleet_factory(**QUIET)
    fleet.start_worker()
    fleet.start_ingress()
    r = redis_server.client()
    url = f"ws://127.0.0.1:{fleet.port}/ws"

    def own(reply: dict[str, Any], who: str, secret: str, other: str) -> None:
        assert reply["session"] == who and MARK in reply["text"], reply
        assert secret in reply["text"] and other not in reply["text"], reply["text"]

    async def scenario() -> None:
        async with connect(url) as alice, connect(url) as bob:
            for ws, who, secret in [(alice, "alice", ALICE), (bob, "bob", BOB)]:
                assert (await say(ws, who, f"{secret} is my plan"))["text"].startswith("echo:")
                failed = await say(ws, who, f"FAIL-{who.upper()} go on with it")
                assert failed["text"].startswith("Sorry, I could not process your message")
            fleet.start_beat()  # the gateway (re)starts
            own(await recv(bob, timeout=60), "bob", BOB, ALICE)  # bob wrote last
            own(await recv(alice, timeout=60), "alice", ALICE, BOB)

    asyncio.run(scenario())
    # What the agent was given: one look per chat, each with that chat's words only.
    looks = [json.dumps(body) for body in llm_server.requests_for(MARK)]
    assert len(looks) == 2 and all((ALICE in look) != (BOB in look) for look in looks)
    assert "2 unfinished conversation(s)" in r.hget(k.SELFCHECK_STATE, "detail")


def test_nothing_unfinished_makes_no_llm_call(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    claw_home.workspace.mkdir(parents=True, exist_ok=True)
    (claw_home.workspace / "HEARTBEAT.md").write_text("# Heartbeat\n- [x] renewed\n")
    fleet = fleet_factory(**QUIET)
    fleet.start_worker()
    fleet.start_ingress()
    r = redis_server.client()

    async def finished_work() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await say(ws, "sc-fine", "a question")

    asyncio.run(finished_work())
    fleet.start_beat()
    wait_for(lambda: r.hget(k.SELFCHECK_STATE, "action"), timeout=30, what="the self-check")
    assert r.hgetall(k.SELFCHECK_STATE)["detail"] == "nothing unfinished: no LLM call"
    assert llm_server.requests_for(MARK) == [] and len(llm_server.requests) == 1
