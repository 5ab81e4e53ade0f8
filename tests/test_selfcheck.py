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
NEEDS_YOU = "The release build failed before the restart; shall I run it again?"


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
    llm_server.push(text(NEEDS_YOU), when=MARK)
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
            assert (reply["session"], reply["text"]) == ("sc-chat", NEEDS_YOU)  # the last chat

    asyncio.run(scenario())
    checks = llm_server.requests_for(MARK)
    assert len(checks) == 1
    prompt = checks[0]["messages"][-1]["content"]
    assert "- session ws:sc-chat:\n  - run-" in prompt
    assert ' ago): failed, error: "the LLM refused the request' in prompt  # the run's error
    assert "sc-done" not in prompt  # finished work is not listed
    assert "- [ ] renew the certificate" in prompt and "- [x] old" not in prompt
    assert "session: selfcheck:main" in checks[0]["messages"][0]["content"]
    assert r.hget(k.SELFCHECK_STATE, "action") == "submitted"
    time.sleep(4)  # a bounded look: neither worker runs another
    assert len(llm_server.requests_for(MARK)) == 1


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
