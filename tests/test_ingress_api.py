"""The ingress HTTP API over real HTTP, with a real worker behind it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
from websockets.asyncio.client import connect

from claw_worker.contract import InboundMessage, MessageStatus
from claw_worker.session.mailbox import Mailbox
from tests.campaign import record
from tests.fixtures.procs import free_port, wait_for
from tests.test_mailbox import enqueue_each

TOKEN = "gw-token-abcdefghijkl"


def test_health_needs_no_token_but_api_does(fleet_factory) -> None:
    fleet = fleet_factory(gateway__token=TOKEN)
    fleet.start_ingress()
    with fleet.client() as http:
        assert http.get("/health").json() == {"status": "ok"}
        resp = http.post("/api/message", json={"text": "hi"})
        assert resp.status_code == 401
        resp = http.post(
            "/api/message", json={"text": "hi"}, headers={"Authorization": "Bearer nope"}
        )
        assert resp.status_code == 401
        assert http.get("/api/messages/abc").status_code == 401
    with fleet.client(TOKEN) as http:
        assert http.post("/api/message", json={"text": "hi"}).status_code == 202


def test_bad_bodies_get_413_and_422_naming_the_field(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    with fleet.client() as http:
        big = {"text": "x" * (513 * 1024)}
        assert http.post("/api/message", json=big).status_code == 413
        resp = http.post(
            "/api/message", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert resp.status_code == 422 and "JSON" in resp.json()["error"]
        resp = http.post("/api/message", json={"text": 5})
        assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "text"
        resp = http.post("/api/message", json={"text": "hi", "timeout": -1})
        assert resp.status_code == 422 and "timeout" in resp.json()["error"]
        resp = http.post("/api/message", json={"text": "hi", "colour": "red"})
        assert resp.status_code == 422 and "colour" in resp.json()["error"]
        resp = http.post("/api/message", json={"text": ""})
        assert resp.status_code == 422
        assert http.get("/api/messages/does-not-exist").status_code == 404


def test_queued_message_is_processed_and_can_be_looked_up(fleet_factory, llm_server) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    with fleet.client() as http:
        resp = http.post("/api/message", json={"text": "hello there", "session": "api:lookup"})
        assert resp.status_code == 202
        body = resp.json()
        assert body["status"] == "queued" and body["session_key"] == "api:lookup"
        # No worker yet: it stays queued (stored before the 202).
        assert http.get(f"/api/messages/{body['message_id']}").json()["status"] == "queued"
        fleet.start_worker()
        done = wait_for(
            lambda: (r := http.get(f"/api/messages/{body['message_id']}").json())["status"] == "done" and r,
            timeout=30, what="message done",
        )  # fmt: skip
        assert done["reply"] == "echo: hello there"


def test_wait_returns_the_reply_or_504_naming_the_message(fleet_factory, llm_server) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    with fleet.client() as http:
        resp = http.post("/api/message", json={"text": "hi", "wait": True})
        assert resp.status_code == 200, resp.text
        assert resp.json()["reply"] == "echo: hi" and resp.json()["status"] == "done"
        llm_server.reply("late answer", delay=3)
        resp = http.post("/api/message", json={"text": "slow", "wait": True, "timeout": 0.5})
        assert resp.status_code == 504
        message_id = resp.json()["message_id"]
        assert message_id in resp.json()["error"]
        done = wait_for(
            lambda: (r := http.get(f"/api/messages/{message_id}").json())["status"] == "done" and r,
            timeout=30, what="slow message done",
        )  # fmt: skip
        assert done["reply"] == "late answer"

        # A run that fails is answered, not timed out: 200, "status": "failed", the reason.
        llm_server.reply_error(400, {"error": {"message": "bad request body"}}, when="refused")
        resp = http.post("/api/message", json={"text": "refused", "wait": True, "timeout": 60})
        assert resp.status_code == 200 and resp.json()["status"] == "failed", resp.text
        assert resp.json()["run_id"] and resp.json()["reply"], resp.text


def test_a_slash_command_answer_has_the_same_fields_as_a_reply(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    with fleet.client() as http:
        for wait in (True, False):
            resp = http.post("/api/message", json={"text": "/help", "wait": wait})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert set(body) == {"message_id", "session_key", "run_id", "status", "reply"}, body
            # Answered at once and stored nowhere: no message to look up, no run.
            assert (body["message_id"], body["run_id"], body["status"]) == (None, None, "done")


def test_claw_gateway_port_overrides_the_configured_port(fleet_factory) -> None:
    fleet = fleet_factory()
    configured = fleet.port
    fleet.port = free_port()  # where the fixture looks for it
    fleet.start_ingress(CLAW_GATEWAY_PORT=str(fleet.port))
    with fleet.client() as http:
        assert http.get("/health").json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{configured}/health", timeout=5)


def test_ingress_never_imports_the_agent_runtime() -> None:
    code = (
        "import sys, claw_ingress.app, claw_ingress.__main__\n"
        "bad = [m for m in sys.modules if m.startswith(('claw_worker.agent', 'claw_worker.tools',"
        " 'claw_worker.providers', 'claw_worker.tasks', 'claw_worker.runtime'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_route_is_404(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    assert httpx.get(f"{fleet.base_url}/nope").status_code == 404


def test_callers_use_only_their_own_sessions(fleet_factory) -> None:
    """An API caller (any local process when no token is set) naming another channel's
    session would have its history read and the reply handed back: /api and /v1 refuse a
    session outside their namespace, /ws keys every name in ws: (the name is its chat id
    too), and the stop route takes only the gateway clients' sessions."""
    fleet = fleet_factory()
    fleet.start_ingress()
    foreign = ["telegram:123", "discord:42", "cli:local", "ws:x", "openai:x", "ops", "api"]
    outcomes: dict[str, int | str] = {}
    with fleet.client() as http:
        for session in foreign:
            resp = http.post("/api/message", json={"text": "a", "session": session})
            outcomes[f"/api {session}"] = resp.status_code
            if resp.status_code == 422:
                assert "session must begin with api:" in resp.text, resp.text
        for session in [s for s in foreign if not s.startswith("openai:")]:
            resp = http.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": "a"}]}, headers={"X-Claw-Session": session,
                "X-Claw-Timeout": "2"})  # fmt: skip
            outcomes[f"/v1 {session}"] = resp.status_code
            if resp.status_code == 400:
                assert "must begin with openai:" in resp.json()["error"]["message"], resp.text
        for session in ["telegram:123", "cli:local", "cron:x"]:
            resp = http.post(f"/api/sessions/{session}/stop")
            outcomes[f"stop {session}"] = resp.status_code
        # Their own namespaces still work.
        assert (
            http.post("/api/message", json={"text": "a", "session": "api:mine"}).status_code == 202
        )
        assert http.post("/api/sessions/ws:abc/stop").status_code == 200

    async def over_ws() -> None:  # /ws maps a name into ws: (it is the chat's id too)
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            for session in ["telegram:123", "cli:local", "ws:own"]:
                await ws.send(json.dumps({"type": "message", "text": "a", "session": session}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert frame["status"] == "queued" and frame["session"] == session, frame

    asyncio.run(over_ws())
    r = fleet.redis.client()
    mailboxes = {key.split("{", 1)[1].rstrip("}") for key in r.scan_iter("claw:mbox:*")}
    assert {"ws:telegram:123", "ws:cli:local", "ws:own", "api:mine"} <= mailboxes, mailboxes
    stored = mailboxes & {"telegram:123", "discord:42", "cli:local", "ops", "api"}
    accepted = {name: status for name, status in outcomes.items() if status not in (400, 422)}
    tried = len(outcomes) + 2  # and the two foreign names over /ws
    record("sessions: another channel's (API, /v1, /ws, stop)", tried=tried,
           rejected=tried - len(accepted) - len(stored), escapes=len(accepted) + len(stored))  # fmt: skip
    assert not accepted and not stored, (accepted, stored)


def test_another_channels_message_record_is_not_the_callers_to_read(fleet_factory) -> None:
    """A chat's message ids are made from the platform's (``telegram-<chat>-<n>``: easily
    guessed), and its record holds the agent's reply to that chat: the API shows the records
    of its own clients' messages only, and another's is as unknown as a made-up id."""
    fleet = fleet_factory()
    fleet.start_ingress()
    chat = InboundMessage(message_id="telegram-5551234-42", channel="telegram",
                          chat_id="5551234", text="my PIN is 1234, remember it")  # fmt: skip
    assert enqueue_each(fleet.redis, [chat])[0].stored  # as the Telegram adapter stores it
    box = Mailbox(fleet.redis.client())  # and as a worker answers it
    assert box.acquire(chat.session_key, "tok")
    taken = box.take(chat.session_key, "tok")
    assert taken is not None
    box.complete(taken.message, "tok", MessageStatus.DONE, "Noted: your PIN is 1234")
    fleet.start_worker()  # only now: it would have taken the chat's message first
    with fleet.client() as http:
        resp = http.get(f"/api/messages/{chat.message_id}")
        assert resp.status_code == 404, resp.text
        assert resp.json() == {"error": f"unknown message_id {chat.message_id}"}
        own = http.post("/api/message", json={"text": "mine", "wait": True}).json()
        record = http.get(f"/api/messages/{own['message_id']}").json()
        assert record["reply"] == "echo: mine" and record["session_key"] == "api:default"
