"""Every message event in the JSON log files of a real fleet (default logging, INFO) carries
the fields SPEC "Logging" lists: started / done / failed / cancelled by the worker and
delivered by the ingress, found by message_id; the preview scrubbed before it is cut."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.fixtures.procs import wait_for
from tests.llm_wire import text

SECRET = "sk-live-abcdefghijklmnopqrstuvwx"
# The secret straddles the 80th character: cut first and scrubbed after, its head
# ("sk-live-", too short to look like a key) would be left in the preview.
WS_TEXT = "x" * 71 + " " + SECRET + " and then some more words after the preview window"
MESSAGE_FIELDS = ("channel", "chat_id", "sender_id", "session_key", "message_id", "preview",
                  "message_content_length")  # fmt: skip


def read_lines(logs: Path) -> list[dict[str, Any]]:
    """Every JSON line of every process's log file (tests/test_logs.py reads one the same way)."""
    return [json.loads(line) for path in sorted(logs.glob("*.log"))
            for line in path.read_text().splitlines()]  # fmt: skip


def events_of(lines: list[dict[str, Any]], message_id: str) -> dict[str, dict[str, Any]]:
    return {x["event"]: x for x in lines if x.get("message_id") == message_id}


def has_message_fields(event: dict[str, Any], text_: str, channel: str) -> None:
    missing = [name for name in MESSAGE_FIELDS if name not in event]
    assert not missing, (missing, event)
    assert event["channel"] == channel
    assert event["message_content_length"] == len(text_)
    assert len(event["preview"]) <= 80 and "sk-live" not in event["preview"], event["preview"]


def test_each_message_event_carries_the_spec_fields(fleet_factory, llm_server) -> None:
    llm_server.reply_error(400, {"error": {"message": "refused"}}, when="FAIL-ME")
    llm_server.add_rule("STOP-ME", text("too late", delay=20))
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()

    async def over_ws() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await ws.send(json.dumps({"type": "message", "text": WS_TEXT}))
            status = json.loads(await asyncio.wait_for(ws.recv(), 30))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
        return status, reply

    status, reply = asyncio.run(over_ws())
    assert reply["type"] == "reply", reply
    with fleet.client() as http:
        failed = http.post("/api/message", json={"text": "FAIL-ME please", "session": "api:f",
                                                 "sender_id": "alice", "wait": True})  # fmt: skip
        assert failed.json()["status"] == "failed", failed.text
        stopped = http.post("/api/message", json={"text": "STOP-ME now", "session": "api:s",
                                                  "sender_id": "bob"}).json()  # fmt: skip
        wait_for(lambda: llm_server.requests_for("STOP-ME"), timeout=30, what="at the LLM")
        assert http.post("/api/sessions/api:s/stop").status_code == 200
        wait_for(lambda: http.get(f"/api/messages/{stopped['message_id']}").json()["status"]
                 == "cancelled", timeout=30, what="cancelled")  # fmt: skip

    logs = fleet.home.path / "logs"

    def trail() -> list[dict[str, Any]] | None:
        lines = read_lines(logs)
        found = events_of(lines, status["message_id"])
        return lines if "message delivered" in found and "message done" in found else None

    lines = wait_for(trail, timeout=30, interval=0.2, what="the ws message's trail")

    # The WebSocket message: started, done (the worker), delivered (the ingress).
    ws = events_of(lines, status["message_id"])
    for name in ("message started", "message done"):
        has_message_fields(ws[name], WS_TEXT, "ws")
        assert ws[name]["level"] == "info" and ws[name]["process"].startswith("w1@")
    assert ws["message started"]["preview"] == "x" * 71 + " sk-**** "
    assert ws["message started"]["queue_wait_ms"] >= 0
    done = ws["message done"]
    # The agent's reply echoes the key; what leaves towards the user has it masked.
    assert reply["text"] == "echo: " + WS_TEXT.replace(SECRET, "sk-****")
    assert done["assistant_content_length"] == len("echo: " + WS_TEXT)
    assert done["transcript_length"] == 2  # the user's message and the reply
    assert done["elapsed_ms"] >= 0 and done["run_id"]
    delivered = ws["message delivered"]
    assert delivered["process"].startswith("ingress")
    assert delivered["channel"] == "ws" and delivered["chat_id"] == status["session"]
    assert delivered["output_content_length"] == len(reply["text"])
    assert "message received" not in ws  # at DEBUG: logging.level INFO is the default

    # Failed and cancelled carry them too.
    fail = events_of(lines, failed.json()["message_id"])["message failed"]
    has_message_fields(fail, "FAIL-ME please", "api")
    assert fail["sender_id"] == "alice" and "refused" in fail["error"]
    cancel = events_of(lines, stopped["message_id"])["message cancelled"]
    has_message_fields(cancel, "STOP-ME now", "api")
    assert cancel["sender_id"] == "bob" and cancel["chat_id"] == "api:s"
    assert cancel["assistant_content_length"] == 0

    # The secret is nowhere in any log, whole or in part.
    everything = "".join(p.read_text() for p in logs.glob("*.log"))
    assert SECRET[3:15] not in everything
