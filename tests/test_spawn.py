"""Sub-agents end to end (real worker, ingress, redis-server, scripted LLM): a sub-agent runs
in its own session and its result comes back to the parent chat over its WebSocket; the
depth and concurrency limits and the no-spawn rule for reports refuse with clear errors; a
sub-agent runs a pipeline task."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage, MessageStatus
from claw_worker.work.origin import RunOrigin
from claw_worker.work.spawn import child_finished, reconcile_spawned, spawn
from tests.fixtures.procs import wait_for
from tests.llm_server import text, tool_call, tool_calls


def tool_results(llm_server: Any, marker: str) -> list[str]:
    """The tool results the model was shown in one run's requests (found by its marker)."""
    found = []
    for body in llm_server.requests_for(marker):
        turn = body["messages"]
        last_user = max(i for i, m in enumerate(turn) if m.get("role") == "user")
        found += [m["content"] for m in turn[last_user:] if m.get("role") == "tool"]
    return list(dict.fromkeys(found))


def chat(port: int, session: str, said: str, until: str) -> list[str]:
    """Say ``said`` in a WebSocket chat; the replies received until one contains ``until``."""

    async def talk() -> list[str]:
        replies: list[str] = []
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"type": "message", "text": said, "session": session}))
            while not any(until in reply for reply in replies):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if frame["type"] == "reply":
                    replies.append(frame["text"])
        return replies

    return asyncio.run(talk())


def test_a_sub_agent_reports_back_to_its_chat_within_its_limits(
    fleet_factory: Any, redis_server: Any, llm_server: Any
) -> None:
    fleet = fleet_factory(work__max_depth=1, work__max_spawn_per_session=1)
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()

    # The parent starts two sub-agents at once: the second is over the limit of one.
    llm_server.push(
        tool_calls([("spawn", {"task": "find the answer [[SUB]]", "role": "researcher"}),
                    ("spawn", {"task": "a second job [[SUB2]]"})]),
        text("I asked a researcher."), when="[[BOSS]]",
    )  # fmt: skip
    # The sub-agent (depth 1) may not spawn again (max_depth 1); it answers slowly.
    llm_server.push(tool_call("spawn", {"task": "deeper [[SUB3]]"}),
                    text("sub result 42", delay=1.0), when="[[SUB]]")  # fmt: skip
    # Its report reaches the parent session as a message; answering it may not spawn.
    llm_server.push(tool_call("spawn", {"task": "again [[SUB4]]"}),
                    text("The researcher found 42."), when="sub result 42")  # fmt: skip

    replies = chat(fleet.port, "ws:boss", "look into it [[BOSS]]", until="found 42")
    assert replies == ["I asked a researcher.", "The researcher found 42."]

    started, refused = tool_results(llm_server, "[[BOSS]]")
    assert started == ("Started sub-agent spawn:ws:boss:1 (researcher). Its result will come "
                       "back to this session as a new message.")  # fmt: skip
    assert refused == (
        "Error: sub-agent not started: this session has 1 sub-agent(s) running, the limit "
        "(work.max_spawn_per_session); wait until one reports back"
    )
    own = "Your task: find the answer [[SUB]]"  # the sub-agent's text (its report quotes the job)
    [deeper] = tool_results(llm_server, own)
    assert deeper == ("Error: sub-agent not started: a sub-agent here would be at depth 2, over "
                      "work.max_depth (1); do this work yourself")  # fmt: skip
    [again] = tool_results(llm_server, "sub result 42")
    assert again.startswith("Error: sub-agent not started: this run answers a sub-agent's "
                            "report, and a report may not start more sub-agents")  # fmt: skip
    assert not llm_server.requests_for("[[SUB2]]") and not llm_server.requests_for("[[SUB3]]")
    assert not llm_server.requests_for("[[SUB4]]")

    # The sub-agent ran in a session of its own, told its part in the system prompt.
    child = llm_server.requests_for(own)[0]
    assert "You are a sub-agent working as researcher" in child["messages"][0]["content"]
    assert not any(m.get("role") == "assistant" for m in child["messages"])  # fresh session
    report = llm_server.requests_for("sub result 42")[0]["messages"][-1]["content"]
    assert report.startswith("[sub-agent spawn:ws:boss:1 (researcher) finished: done]")
    assert "The job you gave it: find the answer [[SUB]]" in report
    record = r.hgetall(k.spawn_key("spawn:ws:boss:1"))
    assert (record["status"], record["depth"], record["result"]) == ("done", "1", "sub result 42")
    assert r.zcard(k.spawn_active_key("ws:boss")) == 0
    history = [json.loads(m) for m in r.lrange(k.history_key("ws:boss"), 0, -1)]
    assert history[-1] == {"role": "assistant", "content": "The researcher found 42."}

    # The slot is free again; a sub-agent runs a task of a pipeline (a pending task refused):
    # its result completes the task, and the next one becomes ready.
    tasks = [
        {"id": "T1", "role": "analyst", "goal": "analyse [[ST1]]"},
        {"id": "T2", "role": "writer", "goal": "write [[ST2]]", "depends_on": ["T1"]},
    ]
    llm_server.push(
        tool_call("pipeline_create", {"pipeline_id": "sp", "goal": "g", "tasks": tasks,
                                      "auto_dispatch": False}),
        tool_calls([("spawn", {"task": "too early", "pipeline_id": "sp", "task_id": "T2"}),
                    ("spawn", {"task": "be thorough", "pipeline_id": "sp", "task_id": "T1"})]),
        text("A sub-agent took T1."), when="[[PIPE]]",
    )  # fmt: skip
    llm_server.reply("T1 result: numbers", when="[[ST1]]")
    llm_server.reply("Noted the analysis.", when="T1 result: numbers")
    replies = chat(fleet.port, "ws:boss", "split it [[PIPE]]", until="Noted the analysis")
    assert replies == ["A sub-agent took T1.", "Noted the analysis."]
    _, too_early, took = tool_results(llm_server, "[[PIPE]]")
    assert too_early == ("Error: sub-agent not started: task T2 of pipeline sp is pending, not "
                         "ready: it waits for T1")  # fmt: skip
    assert took.startswith("Started sub-agent spawn:ws:boss:3 (analyst) for task T1 of pipeline sp")
    [t1_request] = llm_server.requests_for("[[ST1]]")
    t1_text = t1_request["messages"][-1]["content"]
    assert "Instructions from the agent that started you: be thorough" in t1_text
    pipeline = json.loads(r.get(k.pipeline_key("sp")))
    t1, t2 = pipeline["tasks"]
    assert (t1["state"], t1["result"], t1["session_key"]) == (
        "done", "T1 result: numbers", "spawn:ws:boss:3"
    )  # fmt: skip
    assert t2["state"] == "ready" and not llm_server.requests_for("[[ST2]]")
    wait_for(lambda: r.zcard(k.spawn_active_key("ws:boss")) == 0, what="the slot to be free")


def test_a_long_result_is_reported_within_the_message_limit(redis_server: Any) -> None:
    """work.max_result_chars may be as large as quotas.max_message_chars: a result of that
    size made a report over the limit, which the parent's runner failed, so the result was
    lost. The report cuts it to fit, saying so."""
    config = Config.model_validate({"quotas": {"max_message_chars": 5000},
                                    "work": {"max_result_chars": 10_000}})  # fmt: skip
    client = redis_server.client()
    parent = RunOrigin("api:long", "m1", "api", "long", "api", "long", 0)
    child = spawn(client, config, parent, task="write a lot")
    child_finished(client, config, child.session_key, child.message_id, MessageStatus.DONE,
                   "y" * 9000)  # fmt: skip
    [raw] = client.lrange(k.mailbox_key("api:long"), 0, -1)
    report = InboundMessage.model_validate_json(raw)
    assert config.quotas.message_too_long(report.text) is None, len(report.text)
    assert "Its result:\nyyy" in report.text and "more characters]" in report.text


def test_a_sub_agent_whose_reply_went_out_before_its_worker_died_still_reports(
    fleet_factory: Any, redis_server: Any
) -> None:
    """A worker that died after publishing a sub-agent's reply but before completing its
    message: the next holder completed it from the record without the finish hooks, so the
    report never reached the parent (nor was its slot freed) unless the parent spawned
    again. The recovered message now runs them as a finished run does."""
    fleet = fleet_factory()
    fleet.start_ingress()
    r = redis_server.client()
    parent = RunOrigin("api:lost", "m0", "api", "api:lost", "api", "api:lost", 0)
    child = spawn(r, Config(), parent, task="count the files")
    # The state the dead worker left: the reply staged in the record and published.
    r.hset(k.message_key(child.session_key, child.message_id),
           mapping={"reply": "there are 7", "final_status": "done"})  # fmt: skip
    r.set(k.reply_sent_key(child.message_id), 1)
    fleet.start_worker()
    wait_for(lambda: r.hget(k.message_key(child.session_key, child.message_id), "status")
             == "done", timeout=30, what="the recovered message to be completed")  # fmt: skip
    report_id = "spawn-result-" + child.message_id
    report = wait_for(lambda: r.hgetall(k.message_key("api:lost", report_id)), timeout=30,
                      what="the sub-agent's report in the parent session")  # fmt: skip
    assert report["channel"] == "api"
    assert r.zcard(k.spawn_active_key("api:lost")) == 0
    assert r.hget(k.spawn_key(child.session_key), "result") == "there are 7"


def test_a_sub_agent_whose_worker_died_before_reporting_is_reported_by_the_periodic_check(
    redis_server: Any,
) -> None:
    """A worker that died between completing a sub-agent's message and reporting it: only
    the parent's next spawn looked for such a child, so a parent that never spawned again
    never heard the result. The periodic work check (beat's claw.work.reconcile) reports it."""
    config, r = Config(), redis_server.client()
    parent = RunOrigin("api:quiet", "m0", "api", "api:quiet", "api", "api:quiet", 0)
    child = spawn(r, config, parent, task="count the files")
    r.hset(k.message_key(child.session_key, child.message_id),
           mapping={"status": "done", "reply": "there are 7"})  # fmt: skip
    assert reconcile_spawned(r, config) == 1
    [raw] = r.lrange(k.mailbox_key("api:quiet"), 0, -1)
    assert "there are 7" in InboundMessage.model_validate_json(raw).text
    assert r.zcard(k.spawn_active_key("api:quiet")) == 0
    assert reconcile_spawned(r, config) == 0  # nothing left to look at
    assert r.llen(k.mailbox_key("api:quiet")) == 1


def test_stop_reaches_the_sub_agents_the_session_started(
    fleet_factory: Any, redis_server: Any, llm_server: Any
) -> None:
    """A user's /stop ends the work done for them: the sub-agent still running is stopped
    with the chat's own run, and reports that back."""
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    llm_server.push(tool_call("spawn", {"task": "a long job [[LONGSUB]]"}),
                    text("I asked a helper."), when="[[STARTER]]")  # fmt: skip
    llm_server.reply("too late", when="[[LONGSUB]]", delay=60)
    llm_server.reply("Understood, the helper stopped.", when="finished: cancelled")
    replies = chat(fleet.port, "ws:stopper", "start it [[STARTER]]", until="I asked a helper")
    assert replies == ["I asked a helper."]
    wait_for(lambda: llm_server.requests_for("[[LONGSUB]]"), timeout=30, what="the child's call")
    assert len(chat(fleet.port, "ws:stopper", "/stop", until="")) == 1  # "Stopping ..."
    wait_for(lambda: r.hget(k.spawn_key("spawn:ws:stopper:1"), "status") == "cancelled",
             timeout=15, what="the sub-agent to be stopped")  # fmt: skip
    wait_for(lambda: r.zcard(k.spawn_active_key("ws:stopper")) == 0, what="its slot to be free")
