"""Resource-key locks: which keys a message takes (declared or inferred), the lock manager on
a real redis-server (stale waiters, renewal), and through a real fleet: two tasks on one key
(the second waits in resource_lock, shown in /status and its run, and runs after the first;
a third arriving later does not overtake it), a worker killed while holding a key, and
inference for tasks but not for chats."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage, MessageStatus, Origin
from claw_worker.session.submit import submit
from claw_worker.work.lock_keys import (
    MAX_KEYS,
    KeyDeclarationError,
    declared_keys,
    infer_keys,
    resource_keys,
)
from claw_worker.work.locks import ResourceLocks
from claw_worker.work.origin import RunOrigin
from claw_worker.work.spawn import child_finished, spawn
from tests.fixtures.procs import pid_alive, wait_for
from tests.llm_server import text

# -- which keys --------------------------------------------------------------------------------


def test_a_declaration_is_read_and_normalised() -> None:
    assert declared_keys(
        "[keys: repo:clawgo, file:pkg/agent/loop.go, branch:main] fix the chat flow"
    ) == ["branch:main", "file:pkg/agent/loop.go", "repo:clawgo"]
    # Kinds and repo/branch names lower-case, paths keep their case; repositories by name.
    assert declared_keys(
        "do it [Keys: Repository:Acme/API.git path:./src//App.py BRANCH:Main]"
    ) == [
        "branch:main",
        "file:src/App.py",
        "repo:api",
    ]
    assert declared_keys("[keys: branch:origin/Dev, db:Prod]") == ["branch:dev", "db:prod"]
    assert declared_keys("no declaration here, only src/app.py") is None
    # A path with spaces is quoted: it was cut at the space ('notes.md"' is not kind:value).
    assert declared_keys('[keys: file:"docs/release notes.md"; repo:x] tidy') == [
        "file:docs/release notes.md",
        "repo:x",
    ]


@pytest.mark.parametrize(
    ("text_", "says"),
    [
        ("[keys: ] go", "names no key"),
        ("[keys: foo] go", "'foo' is not kind:value"),
        ("[keys: repo:] go", "'repo:' is not kind:value"),
        ("[keys: 9x:y] go", "'9x:y' is not kind:value"),
        ("[keys: file:.] go", "needs a printable value"),
        ('[keys: file:"release notes.md] go', "double quote that encloses no value"),
        ('[keys: file:""] go', "'file:' is not kind:value"),
        ("[keys: " + ", ".join(f"file:f{i}.py" for i in range(MAX_KEYS + 1)) + "]", "at most"),
    ],
)
def test_a_declaration_that_cannot_be_read_says_why(text_: str, says: str) -> None:
    with pytest.raises(KeyDeclarationError, match=says):
        declared_keys(text_)


@pytest.mark.parametrize(
    ("text_", "keys"),
    [
        ("Edit src/app.py on branch main and push", ["branch:main", "file:src/app.py"]),
        ("fix the clawgo repo README.md", ["file:README.md", "repo:clawgo"]),
        (
            "see https://github.com/acme/Widget.git and ./scripts/run.sh",
            ["file:scripts/run.sh", "repo:widget"],
        ),
        ("merge into develop, then the release branch too", ["branch:develop", "branch:release"]),
        ("use repo:ClawGo, then branch:Feature/X.", ["branch:feature/x", "repo:clawgo"]),
        ("check out branch feature/login-form of repo web_app", ["branch:feature/login-form", "repo:web_app"]),
        ("the repo is broken; the same branch as before; and/or later, v1.2.3", []),
        ("/etc/hosts and a/b/c but not key=a/b/c or a@b.com", ["file:/etc/hosts", "file:a/b/c"]),
    ],
)  # fmt: skip
def test_keys_inferred_from_text(text_: str, keys: list[str]) -> None:
    assert infer_keys(text_) == keys


def test_inference_is_capped() -> None:
    many = " ".join(f"src/m{i}.py" for i in range(40))
    keys = infer_keys(many)
    assert len(keys) == MAX_KEYS and "file:src/m0.py" in keys and "file:src/m39.py" not in keys


def test_only_tasks_infer_keys_and_anyone_may_declare() -> None:
    def message(text_: str, origin: Origin | None = None) -> InboundMessage:
        meta = {"origin": origin.value} if origin else {}
        return InboundMessage(channel="api", chat_id="c", text=text_, metadata=meta)

    words = "edit src/app.py on branch main"
    for origin in (Origin.PIPELINE, Origin.SPAWN, Origin.CRON, Origin.AUTONOMY):
        assert resource_keys(message(words, origin)) == ["branch:main", "file:src/app.py"]
    for origin in (None, Origin.HEARTBEAT, Origin.SELFCHECK, Origin.AUTOLEARN):
        assert resource_keys(message(words, origin)) == []  # two chats about a file never wait
    assert resource_keys(message("[keys: repo:x] " + words)) == ["repo:x"]  # declared wins


# -- the lock manager on a real Redis ------------------------------------------------------------


def test_a_waiter_that_stops_trying_stops_blocking(redis_server: Any) -> None:
    client = redis_server.client()
    locks = ResourceLocks(client, ttl_ms=10_000)
    first = locks.acquire("holder", ["repo:x"], stale_sec=0.3)
    assert first.held is not None
    gone = locks.acquire("gone", ["repo:x"], stale_sec=0.3)  # refused, then never tries again
    assert gone.held is None and gone.blocked == (("repo:x", "held"),) and gone.since > 0
    locks.release(first.held)
    late = locks.acquire("late", ["repo:x"], stale_sec=0.3)  # free, but "gone" is older
    assert late.held is None and late.blocked == (("repo:x", "waiter"),)
    assert late.describe() == "repo:x (an older task waits for it)"
    again = wait_for(
        lambda: locks.acquire("late", ["repo:x"], stale_sec=0.3).held,
        timeout=5,
        what="the stale waiter to be dropped",
    )
    assert client.get(k.resource_lock_key("repo:x")) == again.token
    locks.release(again)
    assert client.zscore(k.LOCK_ORDER, "gone") is None  # forgotten, not only skipped


def test_held_keys_are_renewed_and_freed_on_release(redis_server: Any) -> None:
    client = redis_server.client()
    locks = ResourceLocks(client, ttl_ms=600)
    held = locks.acquire("long", ["file:a.py", "branch:main"], stale_sec=60).held
    assert held is not None
    deadline = time.monotonic() + 1.5  # more than twice the TTL: only renewal keeps them
    wait_for(lambda: time.monotonic() > deadline, timeout=5, what="1.5 s to pass")
    for key in ("file:a.py", "branch:main"):
        assert client.get(k.resource_lock_key(key)) == held.token
    assert not held.lost.is_set()
    locks.release(held)
    assert client.exists(k.resource_lock_key("file:a.py"), k.resource_lock_key("branch:main")) == 0


# -- through a real fleet ----------------------------------------------------------------------


def post(http: Any, text_: str, session: str) -> dict[str, Any]:
    resp = http.post("/api/message", json={"text": text_, "session": session})
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def record(r: Any, session: str, message_id: str) -> dict[str, str]:
    return r.hgetall(k.message_key(session, message_id))


def done(r: Any, session: str, message_id: str, timeout: float = 40) -> dict[str, str]:
    return wait_for(
        lambda: (rec := record(r, session, message_id)).get("status") in ("done", "failed") and rec,
        timeout=timeout,
        what=f"{message_id} in {session} to finish",
    )


def run_of(r: Any, posted: dict[str, Any]) -> dict[str, str]:
    return r.hgetall(k.run_key(posted["run_id"]))


def waiting_for_keys(r: Any, posted: dict[str, Any], timeout: float = 30) -> dict[str, str]:
    return wait_for(
        lambda: (run := run_of(r, posted)).get("status") == "resource_lock" and run,
        timeout=timeout,
        what=f"run {posted['run_id']} in resource_lock",
    )


def test_two_tasks_on_one_key_wait_in_turn_and_a_later_one_does_not_overtake(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    llm_server.add_rule("TASK-ONE", text("one done", delay=3))
    llm_server.add_rule("TASK-TWO", text("two done", delay=1))
    fleet = fleet_factory(worker__resource_lock_retry_sec=2)
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    with fleet.client() as http:
        one = post(http, "[keys: repo:x] TASK-ONE", "api:lock-one")
        wait_for(lambda: llm_server.requests_for("TASK-ONE"), timeout=30, what="one at the LLM")
        two = post(http, "[keys: repo:X, file:notes.md] TASK-TWO", "api:lock-two")
        run = waiting_for_keys(r, two)
        assert run["lock_wait"] == "waiting for repo:x (held by another task)"
        assert run["lock_keys"] == "file:notes.md, repo:x"
        status = post(http, "/status", "api:lock-two")["reply"]
        assert status.startswith("session api:lock-two: waiting for resource keys"), status
        assert f"{two['run_id']}: resource_lock (waiting for resource keys for" in status
        assert "resource_lock: waiting for repo:x (held by another task) (since 20" in status
        assert record(r, "api:lock-two", two["message_id"])["status"] == "queued"
        assert not llm_server.requests_for("TASK-TWO")

        # The first finishes; a third task on the same key arrives at once. The key is free
        # (or about to be), but the second waits longer: the third must not overtake it.
        first = done(r, "api:lock-one", one["message_id"])
        three = post(http, "[keys: repo:x] TASK-THREE", "api:lock-three")
        third_wait = waiting_for_keys(r, three)
        assert third_wait["lock_wait"] in (
            "waiting for repo:x (an older task waits for it)",
            "waiting for repo:x (held by another task)",
        )
        second = done(r, "api:lock-two", two["message_id"])
        third = done(r, "api:lock-three", three["message_id"])

    assert first["reply"] == "one done" and second["reply"] == "two done"
    assert third["reply"] == "echo: [keys: repo:x] TASK-THREE"
    assert float(second["started_at"]) >= float(first["finished_at"])
    assert float(third["started_at"]) >= float(second["finished_at"])
    # Waiting is not a failed attempt: each ran once.
    assert [first["attempts"], second["attempts"], third["attempts"]] == ["1", "1", "1"]
    assert run_of(r, two)["status"] == "done"
    # The keys are freed just after the reply is recorded (the run's finally), so poll.
    wait_for(
        lambda: not list(r.scan_iter("claw:{locks}:held:*")), timeout=10, what="every key freed"
    )


def test_a_worker_killed_holding_a_key_frees_it_after_its_ttl(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    # Long enough to start w2 and kill w1 while A holds the key, even on a loaded machine.
    llm_server.add_rule("KILL-A", text("a done", delay=10))
    fleet = fleet_factory(worker__resource_lock_retry_sec=1)  # lease_sec 5: the keys' TTL
    fleet.start_ingress()
    fleet.start_beat()  # the sweeper finds the killed worker's session
    w1 = fleet.start_worker("w1")
    r = redis_server.client()
    with fleet.client() as http:
        a = post(http, "[keys: repo:y] KILL-A", "api:kill-a")
        wait_for(lambda: llm_server.requests_for("KILL-A"), timeout=30, what="A at the LLM")
        b = post(http, "[keys: repo:y] KILL-B", "api:kill-b")
        waiting_for_keys(r, b)
        fleet.start_worker("w2")
        os.kill(w1.pid, signal.SIGKILL)
        killed_at = time.time()
        w1.wait(timeout=10)
        assert not pid_alive(w1.pid)

        b_done = done(r, "api:kill-b", b["message_id"], timeout=60)
        a_done = done(r, "api:kill-a", a["message_id"], timeout=60)

    # The dead holder's key lived on until its TTL (renewed every third of 5 s), then B took
    # it; A, re-run after its session lease expired, came after B, the older waiter.
    assert float(b_done["started_at"]) - killed_at > 2.5
    assert b_done["reply"] == "echo: [keys: repo:y] KILL-B"
    assert a_done["reply"] == "a done" and a_done["attempts"] == "2"
    assert float(a_done["started_at"]) >= float(b_done["started_at"])


def test_a_task_infers_its_keys_a_chat_does_not_and_a_bad_declaration_fails(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    llm_server.add_rule("HOLD-FILE", text("held", delay=3))
    fleet = fleet_factory(worker__resource_lock_retry_sec=1)
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    with fleet.client() as http:
        hold = post(http, "[keys: file:src/app.py] HOLD-FILE", "api:hold")
        wait_for(lambda: llm_server.requests_for("HOLD-FILE"), timeout=30, what="hold at the LLM")

        # A pipeline task naming the file and a branch takes both keys: it waits.
        task = InboundMessage(
            channel="api",
            chat_id="pipe-task",
            text="PIPE-TASK: edit src/app.py on branch main",
            metadata={"origin": Origin.PIPELINE.value},
        )
        submit(r, Config(), task)
        task_run = wait_for(
            lambda: (
                (rid := record(r, task.session_key, task.message_id).get("run_id"))
                and r.hget(k.run_key(rid), "status") == "resource_lock"
                and r.hgetall(k.run_key(rid))
            ),
            timeout=30,
            what="the pipeline task in resource_lock",
        )
        assert task_run["lock_keys"] == "branch:main, file:src/app.py"
        assert task_run["lock_wait"] == "waiting for file:src/app.py (held by another task)"

        # A user's chat about the same file infers nothing: it runs while the file is held.
        chat = post(http, "what is in src/app.py on branch main? CHAT-FREE", "api:chat")
        chatted = done(r, "api:chat", chat["message_id"])
        assert record(r, "api:hold", hold["message_id"])["status"] == "running"

        bad = post(http, "[keys: nonsense] BAD-DECL", "api:bad")
        failed = done(r, "api:bad", bad["message_id"])

        held = done(r, "api:hold", hold["message_id"])
        tasked = done(r, task.session_key, task.message_id)

    assert chatted["reply"] == "echo: what is in src/app.py on branch main? CHAT-FREE"
    assert failed["status"] == "failed" and "'nonsense' is not kind:value" in failed["reply"]
    assert not llm_server.requests_for("BAD-DECL")  # refused before any LLM call
    assert run_of(r, bad)["status"] == "failed"
    assert tasked["status"] == "done"
    assert float(tasked["started_at"]) >= float(held["finished_at"])


def test_a_sub_agents_report_takes_no_keys_from_the_result_it_quotes(redis_server: Any) -> None:
    """A report quotes the sub-agent's job and result: files named there, or a ``[keys: ...]``
    shown as an example, are not its own words. Inferring from them made a chat wait (its
    later messages behind it) for a file another sub-agent held; a quoted bad declaration
    failed the report, so the user never heard the result."""
    client, config = redis_server.client(), Config()
    parent = RunOrigin("api:boss", "m1", "api", "boss", "api", "boss", 0)
    for n, result in enumerate(("I changed src/app.py on branch main", "use [keys: ...] so")):
        child = spawn(client, config, parent, task=f"job {n} on README.md")
        child_finished(client, config, child.session_key, child.message_id,
                       MessageStatus.DONE, result)  # fmt: skip
    reports = [InboundMessage.model_validate_json(raw)
               for raw in client.lrange(k.mailbox_key("api:boss"), 0, -1)]  # fmt: skip
    assert [m.metadata["kind"] for m in reports] == ["result", "result"]
    assert [resource_keys(m) for m in reports] == [[], []]


def test_inference_takes_linear_time_on_long_path_like_words() -> None:
    """A name's lazy ``[\\w./-]*?`` was tried to the end of the word at every word boundary:
    a spawn's 12,000 characters of ``a/a/a/...`` took 2.4 s of regex holding the GIL (every
    run of that worker process stalled), again at each retry while it waited for its keys.
    Names are bounded by MAX_VALUE_CHARS, so it is linear."""
    for word in ("a/", "a-", "a.", "repo a-"):
        started = time.monotonic()
        infer_keys(word * 25_000)
        assert time.monotonic() - started < 1.0, word
