"""Per-turn framework overhead: ``python -m bench.turn [--turns 200] [--sizes 20,200]``.

Times ``Agent.handle`` against a private redis-server and the scripted LLM server (zero
delay, in-process) with the session history reset to N messages before every turn, in two
shapes: (a) a plain text reply, (b) one ``read_file`` tool call then a text reply. The LLM
part is measured inside the same turn by timing the inner ``OpenAICompatProvider.chat``
(client JSON + HTTP + server handling + parse); framework = turn total - those calls. A bare
``OpenAICompatProvider.chat`` replay of the same payload is timed too, as a cross-check.
Target: framework median < 5 ms at 20 history messages. Over target, or with --profile,
cProfile of the turns (main thread) prints the top costs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.report import host_lines
from tests.fixtures.procs import free_port, stop_process, wait_for

TARGET_MS = 5.0
SESSION = "bench:turn-1"
_TEXT = (
    "the deploy of the staging cluster finished but the redis backup job reported a slow "
    "fsync so we should check the disk latency and the alert thresholds before friday"
)
_WORDS = _TEXT.split()


def prose(rng: random.Random, chars: int = 200) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(_WORDS))
    return " ".join(out)[:chars]


def seed_history(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` messages: user/assistant text (~200 chars); every third exchange a tool pair."""
    rng = random.Random(seed)
    msgs: list[dict[str, Any]] = []
    i = 0
    while len(msgs) < n:
        msgs.append({"role": "user", "content": prose(rng)})
        if i % 3 == 2:
            call_id = f"call_seed_{i}"
            call = {"id": call_id, "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "notes.txt"}'}}  # fmt: skip
            msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": prose(rng, 300)})
        msgs.append({"role": "assistant", "content": prose(rng)})
        i += 1
    return msgs[:n]


class TimedProvider:
    """Wraps the real provider: records each ``chat`` call's time and its payload."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[float] = []
        self.payloads: list[tuple[list[dict[str, Any]], Any]] = []
        self.profiler: cProfile.Profile | None = None  # paused during the LLM call

    def chat(self, messages: Sequence[dict[str, Any]], tools: Any, *args: Any, **kw: Any) -> Any:
        if self.profiler is not None:
            self.profiler.disable()
        start = time.perf_counter()
        response = self.inner.chat(messages, tools, *args, **kw)
        self.calls.append((time.perf_counter() - start) * 1000)
        if self.profiler is not None:
            self.profiler.enable()
        self.payloads.append((list(messages), tools))
        return response

    def close(self) -> None:
        self.inner.close()


def make_workspace(root: Path) -> Path:
    ws = root / "workspace"
    ws.mkdir(parents=True)
    rng = random.Random(5)
    (ws / "AGENTS.md").write_text("# Agents\n\n" + "\n".join(prose(rng, 120) for _ in range(8)))
    (ws / "SOUL.md").write_text("# Soul\n\n" + prose(rng, 400))
    (ws / "USER.md").write_text("# User\n\n" + prose(rng, 300))
    (ws / "notes.txt").write_text("\n".join(prose(rng, 80) for _ in range(10)))
    return ws


def build_config(redis_url: str, api_base: str, workspace: Path) -> Any:
    from claw_worker.config.schema import Config

    return Config.model_validate({
        "redis": {"url": redis_url},
        "providers": {"proxy": {"api_base": api_base, "api_key": "sk-bench", "models": ["test-model"]}},
        "agents": {"defaults": {"workspace": str(workspace),
                                "context_compaction": {"enabled": False}}},
        "logging": {"level": "WARNING"},
    })  # fmt: skip


def run_size(agent: Any, timed: TimedProvider, bare: Any, server: Any, client: redis.Redis,
             n: int, shape: str, turns: int, warmup: int,
             prof: cProfile.Profile | None = None) -> dict[str, float]:  # fmt: skip
    from claw_worker.agent.history import MAX_ENTRIES, History
    from claw_worker.contract import InboundMessage

    history = History(client, SESSION)
    seed = seed_history(n)
    rng = random.Random(n)
    totals: list[float] = []
    frames: list[float] = []
    llm: list[float] = []
    bare_ms: list[float] = []
    calls_per_turn = 0
    for k in range(warmup + turns):
        history.replace(seed)
        timed.calls.clear()
        timed.payloads.clear()
        if shape == "tool":
            server.reply_tool_call("read_file", {"path": "notes.txt"})
        server.reply(prose(rng))
        text = prose(rng)
        message = InboundMessage(channel="bench", chat_id="turn-1", sender_id="u", text=text)
        timed.profiler = prof
        if prof is not None:
            prof.enable()
        start = time.perf_counter()
        reply = agent.handle(message)
        total = (time.perf_counter() - start) * 1000
        if prof is not None:
            prof.disable()
        assert reply.llm_calls == (2 if shape == "tool" else 1), reply
        if k < warmup:
            continue
        calls_per_turn = len(timed.calls)
        totals.append(total)
        llm.extend(timed.calls)
        frames.append(total - sum(timed.calls))
        messages, tools = timed.payloads[-1]
        t0 = time.perf_counter()
        bare.chat(messages, tools, "test-model", 1024, 0.1)
        bare_ms.append((time.perf_counter() - t0) * 1000)
    if len(history) != min(MAX_ENTRIES, n + 2 * calls_per_turn):
        raise RuntimeError(f"history has {len(history)} messages, expected N + turn")
    framework = statistics.median(frames)
    llm_med = statistics.median(llm)
    return {
        "total": statistics.median(totals),
        "llm": llm_med,
        "calls": calls_per_turn,
        "bare": statistics.median(bare_ms),
        "framework": framework,
        "p90": _pct(frames, 90),
        "ratio": framework / llm_med if llm_med else 0.0,
        "bare_framework": statistics.median(totals) - calls_per_turn * statistics.median(bare_ms),
    }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def profile(agent: Any, timed: TimedProvider, bare: Any, server: Any, client: redis.Redis,
            n: int, shape: str, turns: int, top: int = 15) -> list[str]:  # fmt: skip
    prof = cProfile.Profile()
    run_size(agent, timed, bare, server, client, n, shape, turns, 0, prof)
    timed.profiler = None
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # type: ignore[attr-defined]
    lines = [f"cProfile of Agent.handle, {turns} turns, shape {shape}, {n} msgs; paused inside "
             "the LLM call; main thread only (tools run in a pool); ms per turn:"]  # fmt: skip
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in rows[:top]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        lines.append(f"  {cumtime / turns * 1000:7.2f} cum {tottime / turns * 1000:6.2f} own "
                     f"{ncalls / turns:6.1f} calls  {func}  ({where})")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="timed turns per size and shape")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sizes", default="20,200", help="history sizes, comma-separated")
    parser.add_argument("--profile", action="store_true", help="profile even when on target")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from claw_worker.embedded_redis import find_redis_server

    with tempfile.TemporaryDirectory(prefix="claw-turn-") as tmp:
        home = Path(tmp)
        os.environ["CLAW_HOME"] = str(home)
        port = free_port()
        proc = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        server = None
        try:
            from claw_worker.agent.loop import Agent
            from claw_worker.providers.failover import Route
            from claw_worker.providers.openai_compat import OpenAICompatProvider
            from claw_worker.redis_conn import client as redis_client
            from tests.llm_server import LLMServer

            url = f"redis://127.0.0.1:{port}/0"
            client = redis_client(url)
            wait_for(client.ping, what="redis-server")
            server = LLMServer(max_recorded=4).start()
            config = build_config(url, server.base_url, make_workspace(home))
            agent = Agent(config, client)
            route = agent.provider.routes[0]
            timed = TimedProvider(route.provider)
            agent.provider.routes[0] = Route(route.name, timed, route.models)  # type: ignore[arg-type]
            bare = OpenAICompatProvider(server.base_url, "sk-bench")
            results = {
                (n, shape): run_size(
                    agent, timed, bare, server, client, n, shape, args.turns, args.warmup
                )
                for n in sizes
                for shape in ("text", "tool")
            }
            worst = max(results.items(), key=lambda kv: kv[1]["framework"])
            over = any(r["framework"] >= TARGET_MS for (n, _), r in results.items() if n == 20)
            prof_lines = (
                profile(agent, timed, bare, server, client, *worst[0], args.turns)
                if over or args.profile
                else []
            )
        finally:
            if server is not None:
                server.stop()
            stop_process(proc)

    for line in host_lines():
        print(line)
    print(f"setup: redis-server (loopback TCP, no persistence), scripted LLM in-process "
          f"(0 ms delay), {args.turns} timed turns per row after {args.warmup} warm-up; "
          "compaction off; history reset to N before each turn")  # fmt: skip
    print()
    print("| history msgs | shape | LLM calls/turn | turn total p50 | LLM call p50 (in-turn) "
          "| bare chat() p50 | framework p50 | framework p90 | framework / LLM call "
          "| total − calls×bare p50 | target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (n, shape), r in results.items():
        target = f"< {TARGET_MS:.0f} ms: " + ("PASS" if r["framework"] < TARGET_MS else "FAIL")
        print(f"| {n} | {shape} | {r['calls']:.0f} | {r['total']:.2f} ms | {r['llm']:.2f} ms "
              f"| {r['bare']:.2f} ms | {r['framework']:.2f} ms | {r['p90']:.2f} ms "
              f"| {r['ratio']:.2f} | {r['bare_framework']:.2f} ms "
              f"| {target if n == 20 else '(report)'} |")  # fmt: skip
    if prof_lines:
        print()
        print("\n".join(prof_lines))


if __name__ == "__main__":
    main()
