"""Pipelines end to end: the agent's pipeline tools on a real fleet (two Celery workers, the
ingress, redis-server, the scripted LLM): a diamond of tasks spread over both workers with
the chat told over its WebSocket, refused plans, a failed task, and /pipeline over the HTTP
API. The store alone: tests/test_pipeline_store.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from claw_worker import constants as k
from tests.fixtures.procs import wait_for
from tests.llm_server import error, last_user_text, text, tool_call, tool_calls


def pipeline_of(r: Any, pid: str) -> dict[str, Any]:
    raw = r.get(k.pipeline_key(pid))
    return json.loads(raw) if raw else {}


def task_runs(r: Any, prefix: str) -> list[dict[str, str]]:
    runs = [r.hgetall(k.run_key(run_id)) for run_id in r.zrange(k.RUNS_INDEX, 0, -1)]
    return [run for run in runs if run.get("session_key", "").startswith(prefix)]


def tool_results(llm_server: Any, marker: str) -> list[str]:
    """The tool results the model was shown in the requests of one run (by its marker)."""
    found = []
    for body in llm_server.requests_for(marker):
        turn = body["messages"]
        last_user = max(i for i, m in enumerate(turn) if m.get("role") == "user")
        found += [m["content"] for m in turn[last_user:] if m.get("role") == "tool"]
    return list(dict.fromkeys(found))


def test_a_diamond_runs_across_two_workers_each_task_once_and_the_chat_is_told(
    fleet_factory: Any, redis_server: Any, llm_server: Any
) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker("w1", concurrency=1)  # one run at a time each: B and C must split
    fleet.start_worker("w2", concurrency=1)
    r = redis_server.client()
    tasks = [
        {"id": "A", "role": "researcher", "goal": "gather facts [[TA]]"},
        {"id": "B", "role": "writer", "goal": "draft the text [[TB]]", "depends_on": ["A"]},
        {"id": "C", "role": "checker", "goal": "check the facts [[TC]]", "depends_on": ["A"]},
        {"id": "D", "role": "editor", "goal": "combine both [[TD]]", "depends_on": ["B", "C"]},
    ]
    llm_server.push(
        tool_call("pipeline_create", {"pipeline_id": "diamond", "goal": "a short report",
                                      "tasks": tasks}),
        tool_call("pipeline_state_set", {"key": "audience", "value": "engineers"}),
        tool_call("pipeline_dispatch", {}),
        text("The pipeline is running."),
        when="[[P]]",
    )  # fmt: skip
    llm_server.push(tool_call("pipeline_state_set", {"key": "facts", "value": ["sky is blue"]}),
                    text("A-result: outline"), when="[[TA]]")  # fmt: skip
    # B and C finish together, on the two workers: D must still start once.
    llm_server.reply("B-result: draft", when="[[TB]]", delay=1.5)
    llm_server.reply("C-result: checked", when="[[TC]]", delay=1.5)
    llm_server.reply("D-result: final report", when="[[TD]]")

    async def chat() -> list[dict[str, Any]]:
        frames = []
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await ws.send(json.dumps({"type": "message", "text": "make a report [[P]]",
                                      "session": "ws-diamond"}))  # fmt: skip
            while not any("Pipeline diamond finished" in f.get("text", "") for f in frames):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return frames

    frames = asyncio.run(chat())
    replies = [f["text"] for f in frames if f["type"] == "reply"]
    assert replies[0] == "The pipeline is running."
    notice = replies[-1]
    assert notice.startswith("Pipeline diamond finished: all 4 tasks done.")
    assert "Result of D (editor):\nD-result: final report" in notice

    done = pipeline_of(r, "diamond")
    assert done["status"] == "done"
    assert [(t["id"], t["state"], t["attempt"]) for t in done["tasks"]] == [
        (i, "done", 1) for i in "ABCD"
    ]
    # Each task ran once, in its own session, after what it depends on.
    for marker, replies_ in (("[[TA]]", 2), ("[[TB]]", 1), ("[[TC]]", 1), ("[[TD]]", 1)):
        assert len(llm_server.requests_for(marker)) == replies_, marker
    runs = task_runs(r, "pipeline:diamond:")
    assert sorted(run["session_key"] for run in runs) == [f"pipeline:diamond:{i}" for i in "ABCD"]
    assert all(run["status"] == "done" for run in runs)
    at = {t["id"]: (t["started_at"], t["finished_at"]) for t in done["tasks"]}
    assert at["A"][1] <= min(at["B"][0], at["C"][0])
    assert max(at["B"][1], at["C"][1]) <= at["D"][0]
    assert {run["worker"].split("@")[0] for run in runs} == {"w1", "w2"}
    # D saw B's and C's results and the shared state (set by the chat's run and by A), and
    # its role in the system prompt.
    [d_request] = llm_server.requests_for("[[TD]]")
    d_text = last_user_text(d_request)
    for part in ("B-result: draft", "C-result: checked", '"audience": "engineers"',
                 '"facts": ["sky is blue"]', "Pipeline goal: a short report"):  # fmt: skip
        assert part in d_text, part
    assert "A-result" not in d_text  # only what D depends on
    system = d_request["messages"][0]["content"]
    assert "You are the editor of task D of pipeline diamond" in system
    assert "set in pipeline diamond's shared state" in tool_results(llm_server, "[[TA]]")[0]


def say(http: Any, text_: str, session: str = "api:plans") -> str:
    resp = http.post("/api/message", json={"text": text_, "session": session, "wait": True,
                                           "timeout": 60})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()["reply"]


def one_worker_fleet(fleet_factory: Any, redis_server: Any) -> tuple[Any, Any]:
    """An ingress and one worker: a Redis client and an HTTP client of the ingress."""
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    return redis_server.client(), fleet.client()


def notices(r: Any, pid: str) -> list[str]:
    found = []
    for _, fields in r.xrange(k.OUTBOUND_STREAM):
        out = json.loads(fields["data"])
        if out["metadata"].get("pipeline_id") == pid:
            found.append(out["text"])
    return found


def test_refusals_a_failed_task_and_the_pipeline_commands(
    fleet_factory: Any, redis_server: Any, llm_server: Any
) -> None:
    r, http = one_worker_fleet(fleet_factory, redis_server)

    def task(i: str, deps: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"id": i, "role": "worker", "goal": f"step {i} [[{i}]]", "depends_on": list(deps)}

    # Refused plans: the model reads why.
    llm_server.push(
        tool_calls([("pipeline_create", {"goal": "g", "tasks": [task("X", ("Y",)),
                                                                task("Y", ("X",))]}),
                    ("pipeline_create", {"goal": "g", "tasks": [task("X", ("nope",))]}),
                    ("pipeline_create", {"goal": "g", "tasks": []})]),
        text("could not"), when="[[BAD]]",
    )  # fmt: skip
    assert say(http, "plan badly [[BAD]]") == "could not"
    cycle, unknown, empty = tool_results(llm_server, "[[BAD]]")
    assert cycle.startswith("Error: pipeline not created: the dependencies form a cycle")
    assert "X → Y → X" in cycle
    assert unknown == ("Error: pipeline not created: task 'X' depends on 'nope', which is not "
                       "a task of this pipeline (tasks: X)")  # fmt: skip
    assert empty.startswith("Error: invalid arguments for pipeline_create: tasks:")
    assert r.zcard(k.PIPELINES) == 0

    # A failed task (the LLM refuses its request) blocks what depends on it and is reported
    # at once while D still runs, then in the final report.
    flaky = [task("A"), task("B", ("A",)), task("C", ("B",)), task("D", ("A",))]
    llm_server.push(
        tool_call("pipeline_create", {"pipeline_id": "flaky", "goal": "g", "tasks": flaky}),
        tool_call("pipeline_dispatch", {"pipeline_id": "flaky"}), text("started"), when="[[F]]",
    )  # fmt: skip
    llm_server.reply("a done", when="[[A]]")
    llm_server.push(error(400, {"error": {"message": "no such thing", "type":
                                          "invalid_request_error"}}), when="[[B]]")  # fmt: skip
    llm_server.reply("d done", when="[[D]]", delay=3)
    assert say(http, "run it [[F]]") == "started"
    assert "Started: A (worker)." in tool_results(llm_server, "[[F]]")[1]
    wait_for(lambda: pipeline_of(r, "flaky").get("status") == "failed", timeout=60,
             what="the flaky pipeline to finish")  # fmt: skip
    states = {t["id"]: t["state"] for t in pipeline_of(r, "flaky")["tasks"]}
    assert states == {"A": "done", "B": "failed", "C": "blocked", "D": "done"}
    assert not llm_server.requests_for("[[C]]")
    first, final = notices(r, "flaky")
    assert first.startswith("Pipeline flaky: task B (worker) failed: the LLM refused the request")
    assert "Not run because of it: C." in first and "Still running: D." in first
    assert final.startswith("Pipeline flaky failed: 1 task(s) failed, 1 blocked, 2 of 4 done.")
    assert "- C (worker) not run: a task it depends on failed" in final
    assert "Result of D (worker):\nd done" in final
    status = say(http, "/pipeline status flaky")
    assert status.startswith("Pipeline flaky: failed, 2/4 tasks done")
    assert "- B (worker) after A: failed — the LLM refused" in status

    # auto_dispatch off: a finished task makes the next one ready, /pipeline ready starts it.
    llm_server.push(
        tool_call("pipeline_create", {"pipeline_id": "manual", "goal": "by hand",
                                      "auto_dispatch": False,
                                      "tasks": [task("M"), task("N", ("M",))]}),
        tool_call("pipeline_dispatch", {}), text("first step started"), when="[[MAN]]",
    )  # fmt: skip
    assert say(http, "step by step [[MAN]]") == "first step started"
    wait_for(lambda: pipeline_of(r, "manual")["tasks"][0]["state"] == "done", timeout=30,
             what="M to be done")  # fmt: skip
    status = say(http, "/pipeline status manual")
    assert "(tasks start on /pipeline ready)" in status and "- N (worker) after M: ready" in status
    assert not llm_server.requests_for("[[N]]")
    assert say(http, "/pipeline ready manual").startswith("Started: N (worker).")
    wait_for(lambda: pipeline_of(r, "manual")["status"] == "done", timeout=30, what="N done")
    assert say(http, "/pipeline ready manual").startswith("Pipeline manual is finished (done)")
    assert notices(r, "manual")[0].startswith("Pipeline manual finished: all 2 tasks done.")

    listing = say(http, "/pipeline list")
    assert listing.splitlines()[0] == "Pipelines (newest first):"
    assert listing.index("- manual: done, 2/2 done") < listing.index("- flaky: failed, 2/4 done")
    assert say(http, "/pipeline list", session="api:other") == "No pipelines."
    hidden = say(http, "/pipeline status flaky", session="api:other")
    assert hidden.startswith("no pipeline 'flaky'")
    assert say(http, "/pipeline status nope").startswith("no pipeline 'nope'")
    assert say(http, "/pipeline frobnicate").startswith("Usage: /pipeline list | status <id>")
    assert say(http, "/pipeline ready").startswith("Usage: /pipeline")
    http.close()


def test_a_cancelled_pipeline_stops_its_running_task_and_starts_no_other(
    fleet_factory: Any, redis_server: Any, llm_server: Any
) -> None:
    r, http = one_worker_fleet(fleet_factory, redis_server)
    tasks = [
        {"id": "L", "role": "worker", "goal": "a long step [[LONG]]"},
        {"id": "M", "role": "worker", "goal": "after it [[AFTER]]", "depends_on": ["L"]},
    ]
    llm_server.push(
        tool_call("pipeline_create", {"pipeline_id": "long", "goal": "g", "tasks": tasks}),
        tool_call("pipeline_dispatch", {}), text("started"), when="[[GO]]",
    )  # fmt: skip
    llm_server.reply("too late", when="[[LONG]]", delay=60)
    assert say(http, "go [[GO]]") == "started"
    wait_for(lambda: llm_server.requests_for("[[LONG]]"), timeout=30, what="L's LLM call")
    # Another chat cannot see it, so cannot cancel it.
    assert say(http, "/pipeline cancel long", session="api:stranger").startswith(
        "no pipeline 'long'"
    )
    reply = say(http, "/pipeline cancel long")
    assert reply == "Pipeline long cancelled. Stopped: L (worker). Not run: M.", reply
    stored = pipeline_of(r, "long")
    assert stored["status"] == "failed"
    assert {t["id"]: t["state"] for t in stored["tasks"]} == {"L": "failed", "M": "blocked"}
    # L's run ends now (as by /stop), not after its 60 s answer; its late finish changes nothing.
    wait_for(lambda: [run.get("status") for run in task_runs(r, "pipeline:long:L")] ==
             ["cancelled"], timeout=15, what="L's run to be stopped")  # fmt: skip
    assert pipeline_of(r, "long")["tasks"][0]["error"].startswith("cancelled by")
    assert not llm_server.requests_for("[[AFTER]]")
    assert say(http, "/pipeline cancel long") == "pipeline long is already finished (failed)"
    assert "cancel <id>" in say(http, "/pipeline cancel")
