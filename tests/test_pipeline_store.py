"""Pipelines without a fleet: the check of a plan (explicit cases and hypothesis), tasks
finishing at the same moment in many threads, a worker that died before reporting, and the
agent's pipeline tools, all against a real redis-server (claw_worker/work/)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from claw_worker import constants as k
from claw_worker.commands.registry import CommandContext, run_command
from claw_worker.config.schema import Config
from claw_worker.contract import MessageStatus
from claw_worker.tools.base import ToolContext
from claw_worker.tools.registry import default_tools
from claw_worker.work import pipelines
from claw_worker.work.model import Creator, Limits, PipelineError, make_pipeline
from claw_worker.work.outcomes import record_work

LIMITS = Limits(max_tasks=20, max_result_chars=4000, max_shared_state_chars=16000)


def plan(tasks: list[tuple[str, list[str]]], **extra: Any) -> Any:
    specs = [{"id": i, "role": "worker", "goal": f"do {i}", "depends_on": d} for i, d in tasks]
    return make_pipeline(
        pipeline_id=extra.pop("pipeline_id", "p1"), goal="a goal", tasks=specs,
        auto_dispatch=True, depth=0, creator=Creator(), limits=LIMITS, now=0.0, **extra,
    )  # fmt: skip


def refusal(tasks: list[tuple[str, list[str]]], **extra: Any) -> str:
    with pytest.raises(PipelineError) as refused:
        plan(tasks, **extra)
    return str(refused.value)


def test_cycles_unknown_dependencies_and_bad_ids_are_refused_with_what_is_wrong() -> None:
    cycle = refusal([("a", ["c"]), ("b", ["a"]), ("c", ["b"]), ("d", [])])
    assert "cycle" in cycle and ("a → c → b → a" in cycle or "c → b → a → c" in cycle), cycle
    assert "a → a" in refusal([("a", ["a"])])
    unknown = refusal([("a", []), ("b", ["a", "zz"])])
    assert unknown == "task 'b' depends on 'zz', which is not a task of this pipeline (tasks: a, b)"
    assert "unique" in refusal([("a", []), ("a", [])])
    assert "task id 'has space'" in refusal([("has space", [])])
    assert "pipeline id 'a:b'" in refusal([("a", [])], pipeline_id="a:b")
    # A trailing newline is not a different id that looks the same ('$' matches before one).
    assert "task id 'a\\n'" in refusal([("a", []), ("a\n", [])])
    assert "pipeline id 'p\\n'" in refusal([("a", [])], pipeline_id="p\n")
    assert "work.max_pipeline_tasks (20)" in refusal([(f"t{i}", []) for i in range(21)])
    for blank in ({"goal": " \n "}, {"role": "\t"}):  # a run with nothing to do, or nobody
        spec = {"id": "a", "role": "r", "goal": "g", **blank}
        with pytest.raises(PipelineError, match=f"task 'a' needs a {next(iter(blank))}"):
            make_pipeline(pipeline_id="p", goal="g", tasks=[spec], auto_dispatch=True, depth=0,
                          creator=Creator(), limits=LIMITS, now=0.0)  # fmt: skip
    made = plan([("a", []), ("b", ["a"]), ("c", ["a", "b"])])
    assert [t.state.value for t in made.tasks] == ["ready", "pending", "pending"]


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
)))  # fmt: skip
def test_a_plan_is_accepted_exactly_when_its_dependencies_have_no_cycle(
    graph: tuple[int, list[tuple[int, int]]],
) -> None:
    n, edges = graph
    deps: dict[str, list[str]] = {f"t{i}": [] for i in range(n)}
    for a, b in edges:
        deps[f"t{a}"].append(f"t{b}")
    # A cycle exists iff repeatedly removing tasks without open dependencies leaves some.
    left = {t: set(d) for t, d in deps.items()}
    while free := [t for t, d in left.items() if not d]:
        for t in free:
            del left[t]
        for d in left.values():
            d.difference_update(free)
    try:
        plan(list(deps.items()))
    except PipelineError as exc:
        assert left, f"refused an acyclic plan: {exc}"
        path = str(exc).split(": ", 1)[1].split(" (")[0].split(" → ")
        assert path[0] == path[-1] and all(b in deps[a] for a, b in itertools.pairwise(path))
    else:
        assert not left, "accepted a plan with a cycle"


def finish_together(
    redis_server: Any, config: Config, pid: str, task_ids: list[str]
) -> tuple[list[str], list[tuple[float, float]]]:
    """Report the tasks done from one thread each, released at once: (tasks those reports
    started, each report's span)."""
    barrier, started, spans = threading.Barrier(len(task_ids)), [], []

    def finish(task_id: str) -> None:
        client = redis_server.client()
        barrier.wait()
        begin = time.monotonic()
        changes = pipelines.task_finished(client, config, pid, task_id, 1, ok=True,
                                          text=f"result of {task_id}")  # fmt: skip
        spans.append((begin, time.monotonic()))
        started.extend(t.id for t in changes.started)

    threads = [threading.Thread(target=finish, args=(t,)) for t in task_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return started, sorted(spans)


def test_a_task_after_many_parents_starts_once_when_they_finish_at_the_same_moment(
    redis_server: Any,
) -> None:
    """Sixteen parents finish in sixteen threads released together, five times over: the
    optimistic transactions collide, and the child is claimed and submitted exactly once."""
    config = Config.model_validate({"redis": {"url": redis_server.url}})
    r = redis_server.client()
    parents = [f"p{i}" for i in range(16)]
    for round_ in range(5):
        pid = f"wide{round_}"
        tasks = [{"id": p, "role": "r", "goal": p} for p in parents]
        tasks.append({"id": "child", "role": "r", "goal": "c", "depends_on": parents})
        made = make_pipeline(pipeline_id=pid, goal="g", tasks=tasks, auto_dispatch=True, depth=0,
                             creator=Creator(), limits=LIMITS, now=time.time())  # fmt: skip
        pipelines.create(r, config, made)
        pipelines.dispatch(r, config, pid)
        started, spans = finish_together(redis_server, config, pid, parents)
        assert started == ["child"]
        assert any(b2 < e1 for (_, e1), (b2, _) in itertools.pairwise(spans))  # concurrent
        child = pipelines.load(r, pid).task("child")
        assert (child.state.value, child.attempt) == ("running", 1)
        queued = [json.loads(m) for m in r.lrange(k.mailbox_key(f"pipeline:{pid}:child"), 0, -1)]
        assert [m["message_id"] for m in queued] == [child.message_id]
        assert all(f"result of {p}" in queued[0]["text"] for p in parents)


def test_a_run_whose_worker_died_before_reporting_is_picked_up_from_its_record(
    redis_server: Any,
) -> None:
    """A worker that dies between finishing a task's run and reporting it, or between
    claiming a task and storing its message: the next reconcile (any dispatch, any status
    read, the periodic one) finishes the task from the message record, or submits again."""
    config = Config.model_validate({"redis": {"url": redis_server.url}})
    r = redis_server.client()
    made = plan([("a", []), ("b", ["a"])], pipeline_id="crashy")
    pipelines.create(r, config, made)
    pipelines.dispatch(r, config, "crashy")
    a = pipelines.load(r, "crashy").task("a")
    # The run finished (COMPLETE wrote the record) but record_work never ran.
    record = {"status": "done", "reply": "a's result"}
    r.hset(k.message_key(a.session_key, a.message_id), mapping=record)
    assert pipelines.reconcile_active(r, config) == 1
    after = pipelines.load(r, "crashy")
    assert (after.task("a").state.value, after.task("a").result) == ("done", "a's result")
    b = after.task("b")
    assert b.state.value == "running"
    # b was claimed but its message never stored (the worker died in between): once it is
    # overdue it is submitted again, with the same message id.
    r.delete(k.mailbox_key(b.session_key), k.message_key(b.session_key, b.message_id))
    pipelines.reconcile_active(r, config)
    assert r.llen(k.mailbox_key(b.session_key)) == 0  # not overdue yet
    data = json.loads(r.get(k.pipeline_key("crashy")))
    data["tasks"][1]["started_at"] -= pipelines.RESUBMIT_AFTER_SEC + 1
    r.set(k.pipeline_key("crashy"), json.dumps(data))
    pipelines.reconcile_active(r, config)
    [again] = [json.loads(m) for m in r.lrange(k.mailbox_key(b.session_key), 0, -1)]
    assert again["message_id"] == b.message_id and "a's result" in again["text"]
    pipelines.reconcile_active(r, config)  # stored now: not submitted twice
    assert r.llen(k.mailbox_key(b.session_key)) == 1


def test_the_tools_default_to_this_sessions_pipeline_and_keep_their_limits(
    redis_server: Any, workspace: Path
) -> None:
    config = Config.model_validate({"work": {"max_depth": 1, "max_active_pipelines": 2,
                                             "max_shared_state_chars": 200}})  # fmt: skip
    r, tools = redis_server.client(), default_tools(config)

    def run(name: str, args: dict[str, Any], session: str = "api:me", **ctx: Any) -> str:
        return tools.run(name, args, ToolContext(workspace, session, config, redis=r, **ctx))

    one = [{"id": "a", "role": "r", "goal": "g"}]
    assert run("pipeline_status", {}).startswith("Error: no pipeline_id given, and this session")
    made = run("pipeline_create", {"goal": "first", "tasks": one})
    pid = made.split()[2]
    assert made.startswith(f"Created pipeline {pid} with 1 task(s) (a); ready to start: a.")
    assert run("pipeline_state_set", {"key": "k", "value": {"n": 1}}).startswith(
        f'k set in pipeline {pid}\'s shared state: {{"k": {{"n": 1}}}}'
    )
    big = run("pipeline_state_set", {"key": "big", "value": "x" * 300})
    assert big.startswith("Error: shared state not changed: the shared state would be")
    assert "work.max_shared_state_chars (200)" in big
    assert run("pipeline_state_set", {"key": "k", "value": None}).startswith("k removed")
    assert run("pipeline_state_set", {"key": "bad key", "value": 1}).startswith(
        "Error: shared state not changed: state key 'bad key' must be"
    )
    status = run("pipeline_status", {})
    assert (
        status.startswith(f"Pipeline {pid}: pending, 0/1 tasks done") and "- a (r): ready" in status
    )
    assert run("pipeline_status", {"pipeline_id": "nope"}).startswith("Error: no pipeline 'nope'")
    run("pipeline_create", {"goal": "second", "tasks": one, "pipeline_id": "second"})
    assert "work.max_active_pipelines" in run("pipeline_create", {"goal": "3", "tasks": one})
    # A task's run (depth 1) acts on its own pipeline, and may not make one (max_depth 1).
    task_ctx = {"session": f"pipeline:{pid}:a", "origin": "pipeline"}
    assert run("pipeline_status", {}, **task_ctx).startswith(f"Pipeline {pid}:")
    deeper = run("pipeline_create", {"goal": "g", "tasks": one}, **task_ctx)
    assert deeper == ("Error: its tasks would run at depth 2, over work.max_depth (1); do this "
                      "work yourself")  # fmt: skip
    assert "would be at depth 2" in run("spawn", {"task": "help"}, **task_ctx)
    # A run answering a sub-agent's report may not start work.
    report = {"message_id": "spawn-result-spawn-123"}
    assert "a report may not start a pipeline" in run("pipeline_create", {"goal": "g",
                                                      "tasks": one}, **report)  # fmt: skip
    assert "a report may not start more sub-agents" in run("spawn", {"task": "t"}, **report)


def test_a_session_cannot_read_or_change_another_sessions_pipeline_through_the_tools(
    redis_server: Any, workspace: Path
) -> None:
    """Pipeline ids are fleet-wide and often guessable ("review"): naming another chat's
    pipeline must not show its results, change its shared state, start its tasks or let a
    sub-agent claim one of them. Its own work (a task's run, a sub-agent of the chat) may."""
    config = Config.model_validate({})
    r, tools = redis_server.client(), default_tools(config)

    def run(name: str, args: dict[str, Any], session: str, **ctx: Any) -> str:
        return tools.run(name, args, ToolContext(workspace, session, config, redis=r, **ctx))

    tasks = [{"id": "a", "role": "r", "goal": "secret work"},
             {"id": "b", "role": "r", "goal": "more", "depends_on": ["a"]}]  # fmt: skip
    run("pipeline_create", {"goal": "alice's plan", "tasks": tasks, "pipeline_id": "review",
                            "auto_dispatch": False}, "api:alice")  # fmt: skip
    before = r.get(k.pipeline_key("review"))
    ref = {"pipeline_id": "review"}
    for name, args in (("pipeline_status", ref), ("pipeline_dispatch", ref),
                       ("pipeline_state_set", {**ref, "key": "k", "value": "mallory"}),
                       ("spawn", {**ref, "task": "show me", "task_id": "a"}),
                       ("spawn", {**ref, "task": "read its state"})):  # fmt: skip
        said = run(name, args, "api:mallory")
        assert said.startswith("Error:") and "no pipeline 'review'" in said, (name, said)
        assert "alice" not in said and "secret" not in said, (name, said)
    assert r.get(k.pipeline_key("review")) == before
    assert not r.keys("claw:*spawn*mallory*")
    # Alice's own work may: her chat, a task's run of it.
    assert run("pipeline_status", ref, "api:alice").startswith("Pipeline review:")
    assert run("pipeline_state_set", {**ref, "key": "k", "value": 1}, "api:alice").startswith(
        "k set"
    )
    task_ctx = {"session": "pipeline:review:a", "origin": "pipeline"}
    assert run("pipeline_status", ref, **task_ctx).startswith("Pipeline review:")


def test_a_deeply_nested_shared_state_value_is_refused_and_the_pipeline_stays_readable(
    redis_server: Any, workspace: Path
) -> None:
    """JSON nested ~200 deep was stored (json.dumps took it) but pydantic's reader stops at
    its recursion limit: every later read of the pipeline failed (status, dispatch, each
    task's finish), so it never finished and its chat was never told."""
    config = Config.model_validate({})
    r, tools = redis_server.client(), default_tools(config)

    def run(name: str, args: dict[str, Any]) -> str:
        return tools.run(name, args, ToolContext(workspace, "api:deep", config, redis=r))

    run("pipeline_create", {"goal": "g", "tasks": [{"id": "a", "role": "r", "goal": "g"}],
                            "pipeline_id": "deep"})  # fmt: skip
    for depth in (199, 400):
        value: Any = 1
        for _ in range(depth):
            value = [value]
        said = run("pipeline_state_set", {"key": "k", "value": value})
        assert said.startswith("Error: shared state not changed: the value is nested"), said
    assert run("pipeline_state_set", {"key": "k", "value": {"a": [[{"b": 1}]]}}).startswith("k set")
    assert run("pipeline_status", {"pipeline_id": "deep"}).startswith("Pipeline deep: pending")
    assert pipelines.load(r, "deep").shared_state == {"k": {"a": [[{"b": 1}]]}}


def test_a_task_after_many_long_results_gets_a_message_within_the_message_limit(
    redis_server: Any,
) -> None:
    """A plan within every limit (32 dependencies, results of work.max_result_chars, a full
    shared state) made a message longer than quotas.max_message_chars: the last task failed
    after all the others' work with "Your message is ... characters long ... Send it in
    shorter parts". Each quoted part is now cut to a fair share of the limit, saying so."""
    config = Config.model_validate({"quotas": {"max_message_chars": 20_000},
                                    "work": {"max_result_chars": 4000,
                                             "max_shared_state_chars": 30_000}})  # fmt: skip
    r = redis_server.client()
    parents = [f"p{i}" for i in range(8)]
    made = make_pipeline(
        pipeline_id="wide", goal="g", auto_dispatch=True, depth=0, creator=Creator(),
        tasks=[*({"id": p, "role": "r", "goal": "g"} for p in parents),
               {"id": "last", "role": "r", "goal": "combine", "depends_on": parents}],
        limits=pipelines.limits(config), now=time.time(),
    )  # fmt: skip
    made.shared_state = {"notes": "n" * 25_000}
    pipelines.create(r, config, made)
    pipelines.dispatch(r, config, "wide")
    for p in parents[:-1]:
        pipelines.task_finished(r, config, "wide", p, 1, ok=True, text=f"{p} says " + "x" * 4000)
    pipelines.task_finished(r, config, "wide", parents[-1], 1, ok=True, text="short one")
    [queued] = r.lrange(k.mailbox_key("pipeline:wide:last"), 0, -1)
    message = json.loads(queued)["text"]
    assert config.quotas.message_too_long(message) is None, len(message)
    assert all(f"--- {p} (r) ---\n{p} says xxx" in message for p in parents[:-1])
    assert "--- p7 (r) ---\nshort one\n" in message  # a short one is whole
    assert "[cut:" in message and "Your task: combine" in message


def test_a_late_run_of_an_expired_pipeline_does_not_finish_its_namesakes_task(
    redis_server: Any,
) -> None:
    """A pipeline expired while a task of it still ran (or waited for its keys), and a new
    one took its id: the old run's finish (same task id, same attempt 1) completed the new
    pipeline's task with the old result. Its message id (the nonce) now has to match."""
    config = Config.model_validate({})
    r = redis_server.client()
    pipelines.create(r, config, plan([("a", [])], pipeline_id="again"))
    _, [old] = pipelines.dispatch(r, config, "again")
    old_message = pipelines.task_message(config, pipelines.load(r, "again"), old)
    r.delete(k.pipeline_key("again"))  # its TTL ran out
    pipelines.create(r, config, plan([("a", [])], pipeline_id="again"))
    _, [new] = pipelines.dispatch(r, config, "again")
    assert (new.attempt, new.message_id != old.message_id) == (1, True)
    record_work(r, config, old_message, MessageStatus.DONE, "the old result", "")
    task = pipelines.load(r, "again").task("a")
    assert (task.state.value, task.result) == ("running", "")
    new_message = pipelines.task_message(config, pipelines.load(r, "again"), new)
    record_work(r, config, new_message, MessageStatus.DONE, "the new result", "")
    task = pipelines.load(r, "again").task("a")
    assert (task.state.value, task.result) == ("done", "the new result")


def test_one_person_cannot_take_every_pipeline_slot_of_the_fleet(
    redis_server: Any, workspace: Path
) -> None:
    """work.max_active_pipelines is fleet-wide, and a pipeline never dispatched stays
    unfinished for work.pipeline_ttl_sec (a week): one chat making 50 took every slot, and
    every other user's pipeline_create was refused for that week. One person (from any of
    their sessions, sub-agents included) now has work.max_active_pipelines_per_sender."""
    config = Config.model_validate({"work": {"max_active_pipelines": 5,
                                             "max_active_pipelines_per_sender": 2}})  # fmt: skip
    r, tools = redis_server.client(), default_tools(config)

    def create(session: str, sender: str, pid: str) -> str:
        ctx = ToolContext(workspace, session, config, redis=r, sender=sender)
        one = [{"id": "a", "role": "r", "goal": "g"}]
        return tools.run("pipeline_create", {"goal": "g", "tasks": one, "pipeline_id": pid,
                                             "auto_dispatch": False}, ctx)  # fmt: skip

    assert create("telegram:666", "telegram:666", "m1").startswith("Created pipeline m1")
    assert create("telegram:-100", "telegram:666", "m2").startswith("Created pipeline m2")
    refused = create("telegram:-200", "telegram:666", "m3")
    assert refused == ("Error: pipeline not created: 2 pipelines made for you are still "
                       "running, the limit (work.max_active_pipelines_per_sender); wait for "
                       "one to finish")  # fmt: skip
    assert create("telegram:1", "telegram:1", "a1").startswith("Created pipeline a1")
    assert create("cron:job", "", "c1").startswith("Created pipeline c1")  # its session's share
    # A finished one frees its place.
    pipelines.dispatch(r, config, "m1")
    pipelines.task_finished(r, config, "m1", "a", 1, ok=True, text="done")
    assert create("telegram:-200", "telegram:666", "m3").startswith("Created pipeline m3")
    assert pipelines.load(r, "m3").owner == "telegram:666"


def test_pipelines_made_at_once_stay_within_both_limits(redis_server: Any) -> None:
    """The limits were counted before the pipeline was stored, outside its transaction:
    twelve pipeline_create calls of one person at the same moment each counted none running
    and all twelve were made, past max_active_pipelines_per_sender (2) and the fleet's
    max_active_pipelines (5) alike."""
    config = Config.model_validate({"work": {"max_active_pipelines": 5,
                                             "max_active_pipelines_per_sender": 2}})  # fmt: skip
    start = threading.Barrier(12)

    def create(n: int, owner: str) -> str:
        r = redis_server.client()
        start.wait()
        try:
            pipeline = plan([("a", [])], pipeline_id=f"p{n}")
            pipeline.owner = owner
            pipelines.create(r, config, pipeline)
        except PipelineError as exc:
            return str(exc)
        return "made"

    def race(owners: list[str]) -> list[str]:
        results: list[str] = [""] * len(owners)
        threads = [threading.Thread(target=lambda n=n, o=o: results.__setitem__(n, create(n, o)))
                   for n, o in enumerate(owners)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return results

    assert race(["telegram:666"] * 12).count("made") == 2
    redis_server.client().flushdb()
    made = race([f"telegram:{n}" for n in range(12)])
    assert made.count("made") == 5, made
    assert all("work.max_active_pipelines)" in m for m in made if m != "made"), made


def test_a_pipeline_whose_task_runs_longer_than_its_ttl_is_kept(redis_server: Any) -> None:
    """The TTL counted from the last change only: a task running (or waiting for its
    resource keys) longer than work.pipeline_ttl_sec lost the pipeline under it; its finish
    was dropped ("not recorded"), its dependents never ran and the chat was never told.
    The periodic reconcile keeps a pipeline with a running task."""
    config = Config.model_validate({"work": {"pipeline_ttl_sec": 3600}})
    r = redis_server.client()
    pipelines.create(r, config, plan([("a", []), ("b", ["a"])], pipeline_id="slow"))
    pipelines.dispatch(r, config, "slow")
    r.expire(k.pipeline_key("slow"), 5)  # an hour of the run has gone by
    pipelines.reconcile_active(r, config)
    assert r.ttl(k.pipeline_key("slow")) > 3000


def test_a_pipeline_task_may_not_hand_its_work_to_work_whose_result_would_be_lost(
    redis_server: Any, workspace: Path
) -> None:
    """A task's final reply is its result. A task run that spawned a helper ended with
    "I asked a helper": that became the task's result, the dependents started with it,
    and the helper's report, answered later in the task's session, reached nobody. So a
    run working for a task may start another ready task of its pipeline (spawn with a
    task_id), not a free sub-agent nor a pipeline of its own; it is told why."""
    config = Config.model_validate({"work": {"max_depth": 4}})
    r, tools = redis_server.client(), default_tools(config)

    def run(name: str, args: dict[str, Any], session: str, **ctx: Any) -> str:
        return tools.run(name, args, ToolContext(workspace, session, config, redis=r, **ctx))

    tasks = [{"id": "a", "role": "r", "goal": "g"}, {"id": "b", "role": "r", "goal": "g"},
             {"id": "c", "role": "r", "goal": "g"}]  # fmt: skip
    run("pipeline_create", {"goal": "g", "tasks": tasks, "pipeline_id": "helpers"}, "api:h")
    pipelines.dispatch(r, config, "helpers")  # a, b, c running
    refused = run("spawn", {"task": "do my part"}, "pipeline:helpers:a", origin="pipeline")
    assert refused.startswith(
        "Error: sub-agent not started: this run works for task a of "
        "pipeline helpers: its final reply is the task's result"
    ), refused
    # Nor a pipeline of its own: the task ended with "I made a pipeline", its dependents
    # started on that, and the inner pipeline's result went to the chat.
    nested = run("pipeline_create", {"goal": "g", "tasks": tasks}, "pipeline:helpers:a",
                 origin="pipeline")  # fmt: skip
    assert nested.startswith(
        "Error: this run works for task a of pipeline helpers: its final reply is the task's result"
    ), nested
    # A sub-agent running a task (claimed from the chat) is bound the same way.
    r.delete(k.pipeline_key("helpers"))
    run("pipeline_create", {"goal": "g", "tasks": tasks, "pipeline_id": "helpers2",
                            "auto_dispatch": False}, "api:h")  # fmt: skip
    took = run("spawn", {"task": "go", "pipeline_id": "helpers2", "task_id": "a"}, "api:h")
    child = took.split()[2]
    said = run("spawn", {"task": "sub-help"}, child, origin="spawn")
    assert "this run works for task a of pipeline helpers2" in said, said
    said = run("pipeline_create", {"goal": "g", "tasks": tasks}, child, origin="spawn")
    assert "this run works for task a of pipeline helpers2" in said, said
    # Another ready task of its pipeline it may start: that result completes that task.
    other = run("spawn", {"task": "go", "task_id": "b"}, child, origin="spawn")
    assert "for task b of pipeline helpers2" in other, other
    # A chat's sub-agent that only reads a pipeline's shared state is free.
    assert run("spawn", {"task": "look", "pipeline_id": "helpers2"}, "api:h").startswith(
        "Started sub-agent"
    )


def test_a_chat_lists_its_own_pipelines_however_many_others_made_since(
    redis_server: Any,
) -> None:
    """/pipeline list read the fleet's 50 newest pipelines and kept this chat's: once other
    chats had made 50 more, a chat's own pipelines were gone from its list ("No pipelines.")
    while still running. A chat's list now reads the pipelines made for it."""
    config = Config.model_validate({"redis": {"url": redis_server.url},
                                    "work": {"max_active_pipelines": 100}})  # fmt: skip
    r = redis_server.client()

    def make(pid: str, session: str, chat: str, at: float) -> None:
        made = plan([("a", [])], pipeline_id=pid)
        made.creator = Creator(session_key=session, channel="api", chat_id=chat)
        made.created_at = at
        pipelines.create(r, config, made)

    make("mine", "api:alice", "alice", 1.0)
    make("by-helper", "spawn:api:alice:1", "alice", 2.0)  # her sub-agent's, for her chat
    for i in range(60):
        make(f"bob-{i}", "api:bob", "bob", 10.0 + i)

    def listing(session: str, chat: str, command: str = "/pipeline list") -> str:
        async def ask() -> str | None:
            client = aioredis.from_url(redis_server.url, decode_responses=True)
            try:
                ctx = CommandContext(client, config, session, channel="api", chat_id=chat)
                return await run_command(ctx, command)
            finally:
                await client.aclose()

        return asyncio.run(ask()) or ""

    mine = listing("api:alice", "alice")
    assert mine.splitlines()[1:] == ["- by-helper: pending, 0/1 done — a goal",
                                     "- mine: pending, 0/1 done — a goal"], mine  # fmt: skip
    theirs = listing("api:bob", "bob").splitlines()
    assert len(theirs) == 1 + 20 and theirs[1].startswith("- bob-59:")
    assert listing("api:carol", "carol") == "No pipelines."
    # An id of 50,000 characters is not echoed whole.
    huge = listing("api:carol", "carol", "/pipeline status " + "x" * 50_000)
    assert huge.startswith("no pipeline 'xxx") and len(huge) < 200, len(huge)
