"""End to end through real processes: ingress → Redis mailbox → Celery worker → LLM."""

from __future__ import annotations

import concurrent.futures as cf

from claw_worker import constants as k
from tests.fixtures.procs import wait_for


def test_fifo_in_one_session_while_ten_others_run(fleet_factory, llm_server, redis_server) -> None:
    llm_server.default_delay = 0.05
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker(concurrency=20)
    ids: dict[str, list[str]] = {}
    with fleet.client() as http:

        def send(session: str, n: int) -> None:
            for i in range(n):
                resp = http.post(
                    "/api/message", json={"text": f"{session} #{i}", "session": session}
                )
                assert resp.status_code == 202, resp.text
                ids.setdefault(session, []).append(resp.json()["message_id"])

        sessions = {"api:ordered": 20} | {f"api:other-{j}": 3 for j in range(10)}
        with cf.ThreadPoolExecutor(len(sessions)) as pool:
            list(pool.map(lambda item: send(*item), sessions.items()))

        def all_done() -> bool:
            return all(
                http.get(f"/api/messages/{mid}").json()["status"] == "done"
                for mids in ids.values() for mid in mids
            )  # fmt: skip

        wait_for(all_done, timeout=90, interval=0.3, what="all messages done")

    # The LLM saw the ordered session's messages in the order they were sent ...
    seen = [
        r["messages"][-1]["content"]
        for r in llm_server.requests
        if r["messages"][-1]["content"].startswith("api:ordered #")
    ]
    assert seen == [f"api:ordered #{i}" for i in range(20)]
    # ... and the session history holds them in that order, each followed by its reply.
    history = [m for m in redis_server.client().lrange(k.history_key("api:ordered"), 0, -1)]
    user_texts = [
        t
        for t in (__import__("json").loads(h).get("content") for h in history)
        if t and t.startswith("api:ordered #")
    ]
    assert user_texts == [f"api:ordered #{i}" for i in range(20)]
    # Other sessions ran while the ordered one was still going.
    assert llm_server.peak_concurrency > 1


def test_tool_call_round_trip_through_the_fleet(fleet_factory, llm_server, claw_home) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    llm_server.reply_tool_call(
        "write_file", {"path": "notes/hello.txt", "content": "from the fleet"}
    )
    llm_server.reply("I wrote the file.")
    with fleet.client() as http:
        resp = http.post("/api/message", json={"text": "write a file", "wait": True, "timeout": 60})
    assert resp.status_code == 200, resp.text
    assert resp.json()["reply"] == "I wrote the file."
    assert (claw_home.workspace / "notes" / "hello.txt").read_text() == "from the fleet"
    tool_msgs = [m for m in llm_server.requests[-1]["messages"] if m["role"] == "tool"]
    assert tool_msgs and "notes/hello.txt" in tool_msgs[0]["content"]
