"""Autonomous mode and auto-learning end to end: real beat (the autonomy tick every second),
worker, ingress and a WebSocket chat, with the scripted LLM; ``clawctl gateway autonomy``
as a subprocess."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from claw_worker import constants as k
from claw_worker.autonomy_state import Autolearn, Autonomy, parse_interval
from tests.fixtures.procs import wait_for
from tests.llm_server import text, tool_call

ROUND = "[autonomy round"
LEARN = "[autolearn round"
TOKEN = "autonomy-token-abcdef"
FAST = {
    "agents__defaults__heartbeat__enabled": False,
    "agents__defaults__runtime_control__autonomy_tick_interval_sec": 1,
    "agents__defaults__runtime_control__autonomy_min_run_interval_sec": 1,
    "agents__defaults__runtime_control__autonomy_idle_threshold_sec": 1,
}


async def recv(ws: ClientConnection, timeout: float = 60.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def say(ws: ClientConnection, session: str, words: str) -> dict[str, Any]:
    """Send a message in ``session``; its status frame and then its reply frame."""
    await ws.send(json.dumps({"type": "message", "text": words, "session": session}))
    assert (await recv(ws))["status"] in ("queued", "command")
    return await recv(ws)


async def until_stopped(ws: ClientConnection, timeout: float = 60) -> list[tuple[float, str]]:
    """(arrival time, text) of each frame up to and including the "stopped" notice."""
    frames = []
    while True:
        frame = await recv(ws, timeout)
        frames.append((time.monotonic(), frame["text"]))
        if "mode stopped" in frame["text"]:
            return frames


def run(fleet: Any, r: Any, scenario: Any) -> Any:
    """``asyncio.run(scenario)``; a frame that never came fails with what the fleet was doing."""
    try:
        return asyncio.run(scenario)
    except TimeoutError:
        logs = {name: fleet.output(name)[-3000:] for name in ("w1", "beat")}
        raise AssertionError(f"no frame in time; state {r.hgetall(k.AUTONOMY)}; {logs}") from None


def state(r: Any) -> Autonomy:
    return Autonomy.from_hash(r.hgetall(k.AUTONOMY))


def test_rounds_come_at_the_interval_in_the_chat_session_and_stop_at_the_limit(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    llm_server.add_rule(ROUND, "Drafted the next section of the report.")
    fleet = fleet_factory(
        **FAST, agents__defaults__runtime_control__autonomy_max_rounds_without_user=3
    )
    fleet.start_worker()
    fleet.start_ingress()
    fleet.start_beat()
    r = redis_server.client()

    async def scenario() -> list[tuple[float, str]]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            assert (await say(ws, "auto-a", "we are writing a report"))["text"].startswith("echo")
            answer = await say(ws, "auto-a", "start autonomous mode, check every 2 seconds")
            assert answer["text"].startswith("Autonomous mode on for this chat")
            return await until_stopped(ws)

    frames = run(fleet, r, scenario())
    reports = [at for at, words in frames if words == "Drafted the next section of the report."]
    assert len(reports) == 3 and len(frames) == 4
    assert all(b - a > 1.5 for a, b in itertools.pairwise(reports))  # every 2 s
    assert frames[-1][1].startswith(
        "Autonomous mode stopped: 3 round(s) without hearing from you "
        "(runtime_control.autonomy_max_rounds_without_user is 3)"
    )
    rounds = llm_server.requests_for(ROUND)
    assert [last_user(req)[:18] for req in rounds] == [f"[autonomy round {n}]" for n in (1, 2, 3)]
    for req in rounds:  # the chat's own session, with its history
        assert "session: ws:auto-a" in req["messages"][0]["content"]
        assert req["messages"][1]["content"] == "we are writing a report"
    assert any("[autonomy round 2]" in str(m.get("content")) for m in rounds[2]["messages"])
    now = state(r)
    assert (now.enabled, now.rounds, now.interval_sec) == (False, 3, 2)
    wait_ticks(fleet, 4)  # beat went on ticking past the 2 s interval: no round came
    assert len(llm_server.requests_for(ROUND)) == 3


def ticks(fleet: Any) -> int:
    """Autonomy ticks the worker has finished (Celery logs each task's success)."""
    return len(re.findall(r"claw\.autonomy\.tick\[[^\]]+\] succeeded", fleet.output("w1")))


def wait_ticks(fleet: Any, count: int) -> None:
    """Wait for ``count`` more ticks: a look at what beat does next, bounded by events."""
    start = ticks(fleet)
    wait_for(lambda: ticks(fleet) >= start + count, timeout=30, what=f"{count} more ticks")


def last_user(request: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


def test_stalls_stop_it_and_a_user_message_resets_the_count(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    llm_server.add_rule(ROUND, "AUTONOMY_IDLE")
    control = "agents__defaults__runtime_control__"
    fleet = fleet_factory(**FAST, **{f"{control}autonomy_max_consecutive_stalls": 2,
                                     f"{control}autonomy_max_rounds_without_user": 3,
                                     f"{control}autonomy_max_pending_duration_sec": 2})  # fmt: skip
    fleet.start_worker()
    fleet.start_ingress()
    fleet.start_beat()
    r = redis_server.client()

    async def stalls() -> list[tuple[float, str]]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            assert (await say(ws, "auto-b", "/autonomy on"))["text"].startswith(
                "Autonomous mode on"
            )
            return await until_stopped(ws)  # the AUTONOMY_IDLE replies are not delivered

    frames = run(fleet, r, stalls())
    assert len(frames) == 1 and frames[0][1].startswith(
        "Autonomous mode stopped: 2 round(s) in a row made no progress (round 2 replied "
        "AUTONOMY_IDLE; runtime_control.autonomy_max_consecutive_stalls is 2)"
    )
    assert len(llm_server.requests_for(ROUND)) == 2

    llm_server.reset()
    llm_server.add_rule(ROUND, "Tested one more module of the project.")

    async def reset_by_user() -> list[tuple[float, str]]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await say(ws, "auto-b", "/autonomy on every 3 seconds")
            assert (await recv(ws))["text"] == "Tested one more module of the project."
            assert state(r).rounds_without_user == 1
            assert (await say(ws, "auto-b", "good, keep going"))["text"] == "echo: good, keep going"
            return await until_stopped(ws)

    frames = run(fleet, r, reset_by_user())
    # 1 round, the user's message, then the 3 rounds the limit allows without the user.
    assert [words for _, words in frames[:-1]] == ["Tested one more module of the project."] * 3
    assert "3 round(s) without hearing from you" in frames[-1][1]
    assert state(r).rounds == 4 and len(llm_server.requests_for(ROUND)) == 4

    # A round that takes longer than autonomy_max_pending_duration_sec is a stall per period.
    llm_server.reset()
    llm_server.add_rule(ROUND, text("Finished the slow migration at last.", delay=6))

    async def slow_rounds() -> list[str]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await say(ws, "auto-b", "/autonomy on")
            notice = (await until_stopped(ws))[-1][1]
            late = await recv(ws)  # the slow round still finishes, after the stop
            return [notice, late["text"]]

    notice, late = run(fleet, r, slow_rounds())
    # Two periods of 2 s make two stalls: the tick that sees it comes 4 s or more in (beat ticks
    # every second, and drift), and before the 6 s round finishes (its reply comes after).
    stopped = re.match(r"Autonomous mode stopped: 2 round\(s\) in a row made no progress "
                       r"\(round 1 waited (\d+) s to finish, more than "
                       r"autonomy_max_pending_duration_sec \(2\)", notice)  # fmt: skip
    assert stopped and 4 <= int(stopped[1]) <= 6, notice
    assert late == "Finished the slow migration at last."
    assert len(llm_server.requests_for(ROUND)) == 1


def test_clawctl_gateway_autonomy(fleet_factory: Any, redis_server: Any, claw_home: Any) -> None:
    fleet = fleet_factory(**FAST)
    fleet.start_ingress()
    r = redis_server.client()

    def clawctl(*args: str) -> tuple[int, str]:
        result = claw_home.clawctl("gateway", "autonomy", *args)
        return result.returncode, (result.stdout + result.stderr).strip()

    assert clawctl("status") == (0, "Autonomous mode: off\nAuto-learning: off")
    code, out = clawctl("on")
    assert code == 1 and "no chat to work for" in out
    code, out = clawctl("on", "--every", "soon")
    assert code == 1 and "--every: 'soon' is not an interval" in out
    code, out = clawctl("on", "--every", "0m")
    assert code == 1 and "between 1 second and 7 days" in out
    code, out = clawctl("on", "--session", "nosuch")
    assert code == 1 and "no recent message in session 'nosuch'" in out
    assert r.hgetall(k.AUTONOMY) == {}  # nothing half-written

    async def write() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            await ws.send(json.dumps({"type": "message", "text": "hi", "session": "cli-chat"}))
            assert (await recv(ws))["status"] == "queued"

    run(fleet, r, write())
    assert clawctl("on", "--every", "30m") == (
        0, "autonomous mode on for ws:cli-chat: a round at most every 30 min once its user has "
        "been away 1 s")  # fmt: skip
    now = state(r)
    assert (now.enabled, now.session_key, now.chat_id, now.interval_sec) == (
        True, "ws:cli-chat", "cli-chat", 1800)  # fmt: skip
    code, out = clawctl("status")
    assert code == 0 and out.startswith(
        "Autonomous mode: on for ws:cli-chat, a round at most every 30 min"
    )
    assert clawctl("on", "--session", "ws:cli-chat", "--every", "2h")[0] == 0
    assert state(r).interval_sec == 7200
    assert clawctl("off") == (0, "autonomous mode off")
    assert clawctl("off") == (0, "autonomous mode is already off")
    code, out = clawctl("status")
    assert (
        out.startswith("Autonomous mode: off (stopped ") and "ago: turned off with clawctl)" in out
    )


def test_natural_language_and_who_may_switch(fleet_factory: Any, redis_server: Any) -> None:
    fleet = fleet_factory(**FAST, gateway__token=TOKEN, gateway__admins=["api:ops"])
    fleet.start_ingress()
    r = redis_server.client()

    async def chat() -> None:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws?token={TOKEN}") as ws:
            on = await say(ws, "nl-chat", "start autonomous mode, check every 30 minutes")
            assert on["text"].startswith("Autonomous mode on for this chat")
            assert (state(r).enabled, state(r).interval_sec, state(r).session_key) == (
                True, 1800, "ws:nl-chat")  # fmt: skip
            assert (await say(ws, "nl-chat", "stop autonomous mode"))[
                "text"
            ] == "Autonomous mode off."
            await say(ws, "nl-chat", "开始自主模式，每2小时检查一次")
            assert (state(r).enabled, state(r).interval_sec) == (True, 7200)
            # Another chat may not take it over; the owner's chat stops it.
            other = await say(ws, "nl-other", "/autonomy off")
            assert "working for another chat" in other["text"] and state(r).enabled
            assert (await say(ws, "nl-chat", "停止自主模式"))["text"] == "Autonomous mode off."
            bad = await say(ws, "nl-chat", "/autonomy on every 0 minutes")
            assert bad["text"].startswith("the interval must be between") and not state(r).enabled
            refused = await say(ws, "nl-chat", "stop auto-learning")
            assert refused["text"].startswith("/autolearn is for admins only")

    run(fleet, r, chat())
    with fleet.client(TOKEN) as http:

        def ask(words: str) -> str:
            body = {"text": words, "session": "api:ops", "sender_id": "ops"}
            return http.post("/api/message", json=body).json()["reply"]

        assert ask("start auto-learning every 10 minutes").startswith("Auto-learning on")
        learn = Autolearn.from_hash(r.hgetall(k.AUTONOMY))
        assert (learn.enabled, learn.interval_sec) == (True, 600)
        assert ask("停止自动学习") == "Auto-learning off."
        assert ask("/autonomy status").startswith("Autonomous mode: off")
    assert parse_interval(["每", "30", "分钟"]) == 1800


def test_autolearn_saves_procedures_and_stops_after_its_rounds(
    fleet_factory: Any, llm_server: Any, redis_server: Any, claw_home: Any
) -> None:
    llm_server.add_rule(ROUND, "Deployed one more part of the site.")
    procedure = "To deploy the site, run make deploy from the repository root."
    for n in (1, 2):
        saving = {"layer": "procedures", "text": f"{procedure} ({n})"}
        llm_server.push(tool_call("memory_write", saving), text(f"Saved {n}."), when=LEARN)
    limit = {"agents__defaults__runtime_control__autolearn_max_rounds_without_user": 2}
    fleet = fleet_factory(**FAST, **limit, gateway__token=TOKEN, gateway__admins=["api:ops"])
    fleet.start_worker()
    fleet.start_ingress()
    fleet.start_beat()
    r = redis_server.client()

    async def scenario() -> list[str]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws?token={TOKEN}") as ws:
            await say(ws, "learn-chat", "deploy the site")
            await say(ws, "learn-chat", "start autonomous mode, check every 2 seconds")
            with fleet.client(TOKEN) as http:
                body = {
                    "text": "/autolearn on every 1 second",
                    "session": "api:ops",
                    "sender_id": "ops",
                }
                assert (
                    http.post("/api/message", json=body)
                    .json()["reply"]
                    .startswith("Auto-learning on")
                )
            seen = []
            while "Auto-learning stopped" not in (seen[-1] if seen else ""):
                seen.append((await recv(ws, timeout=60))["text"])
            return seen

    seen = run(fleet, r, scenario())
    assert seen[-1].startswith(
        "Auto-learning stopped: 2 review round(s) without hearing from you "
        "(runtime_control.autolearn_max_rounds_without_user is 2)"
    )
    assert not any(words.startswith("Saved ") for words in seen)  # not delivered
    saved = (claw_home.workspace / "memory" / "procedures.md").read_text()
    assert f"{procedure} (1)" in saved and f"{procedure} (2)" in saved
    learns = llm_server.requests_for(LEARN)
    assert len(learns) == 4  # two rounds, each a tool call and its answer
    first = last_user(learns[0])
    assert first.startswith("[autolearn round 1]") and "- session ws:learn-chat:" in first
    assert ": done, 1 LLM call(s), 0 tool step(s)" in first  # the chat's runs, digested
    assert learns[1]["messages"][-1]["content"].startswith("Saved to memory/")
    assert len(learns[2]["messages"]) == 2  # round 2 starts afresh: system, its digest
    assert "session: autolearn:main" in learns[0]["messages"][0]["content"]
    wait_ticks(fleet, 4)  # ticks went on past the interval: no learning round came
    assert len(llm_server.requests_for(LEARN)) == 4
    assert not Autolearn.from_hash(r.hgetall(k.AUTONOMY)).enabled


def test_clawctl_autonomy_refuses_an_empty_session_and_too_long_an_interval(
    redis_server: Any, claw_home: Any
) -> None:
    claw_home.write_config({"redis": {"url": redis_server.url}})
    # A chat wrote last: an empty --session must not fall back to it.
    chat = {"channel": "telegram", "chat_id": "42", "session_key": "telegram:42", "at": 1}
    redis_server.client().set(k.LAST_ACTIVE, json.dumps(chat))

    def clawctl(*args: str) -> tuple[int, str]:
        result = claw_home.clawctl("gateway", "autonomy", "on", *args)
        return result.returncode, (result.stdout + result.stderr).strip()

    for empty in ("", "  "):
        code, out = clawctl("--session", empty)
        assert code == 1 and out.startswith("Error: --session: empty; give a session key"), out
    for long in ("30 years", "2 months", "8 days", "2 weeks", "9999999 minutes"):
        code, out = clawctl("--every", long)
        assert code == 1 and out == (
            f"Error: --every: the interval must be between 1 second and 7 days: '{long}' is "
            "too long"), out  # fmt: skip
    assert redis_server.client().hgetall(k.AUTONOMY) == {}  # nothing written
    assert parse_interval(["every", "2", "days"]) == 2 * 86400
    assert parse_interval(["1w"]) == 7 * 86400


REPORT = "Round report: the build was checked."  # longer than a quiet ack


def started(fleet_factory: Any, **control: Any) -> Any:
    """A fleet (worker, ingress, beat) with FAST and these ``runtime_control`` settings."""
    fleet = fleet_factory(**FAST, **{f"agents__defaults__runtime_control__{key}": value
                                     for key, value in control.items()})  # fmt: skip
    for start in (fleet.start_worker, fleet.start_ingress, fleet.start_beat):
        start()
    return fleet


def test_a_sub_agents_report_is_not_the_user_coming_back(
    fleet_factory: Any, llm_server: Any, redis_server: Any
) -> None:
    """Each round starts a sub-agent whose report is answered in the chat's session: that
    answer is no user message, so the rounds without the user still reach their limit."""
    for _ in range(4):
        llm_server.reply_tool_call("spawn", {"task": "SUBTASK check the build"}, when=ROUND)
        llm_server.reply(REPORT, when=ROUND)
    llm_server.add_rule(ROUND, REPORT)
    fleet = started(fleet_factory, autonomy_max_rounds_without_user=2)
    r = redis_server.client()

    async def scenario() -> list[str]:
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            assert (await say(ws, "auto-s", "/autonomy on"))["text"].startswith("Autonomous")
            frames: list[str] = []
            while not any("mode stopped" in f for f in frames):
                frames.append((await recv(ws))["text"])
                if frames.count(REPORT) > 3:  # it would go on for ever
                    break
            return frames

    frames = run(fleet, r, scenario())
    assert frames.count(REPORT) == 2, frames
    assert "2 round(s) without hearing from you" in frames[-1], frames
    assert len(llm_server.requests_for(ROUND)) == 4  # 2 rounds, each a tool call and a reply
