"""Compact digests of recent runs, for the agent to read: the start-up self-check shows the
unfinished ones, auto-learning the finished ones.

The runs index (``session/runs.py``) lists every run for ``run_state_ttl_seconds``; a run
names its session, status, error and counts, and the session's history holds what was
said. A digest line per session keeps a prompt to a few thousand characters.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from claw_worker import constants as k
from claw_worker.autonomy_state import human

# Sessions of the time-driven work's own looks around: never reviewed or continued as work.
OWN_SESSIONS = ("heartbeat:", "selfcheck:", "autolearn:")
HISTORY_TAIL = 12  # history messages looked at per session
QUOTE_CHARS = 200
MAX_DIGEST_CHARS = 6000


def recent_runs(
    client: redis.Redis, *, since: float = 0.0, limit: int = 100, skip: tuple[str, ...] = ()
) -> list[tuple[float, dict[str, str]]]:
    """(queued time, record) of the newest runs queued after ``since``, newest first, those
    of sessions starting with OWN_SESSIONS or ``skip`` left out."""
    skip = OWN_SESSIONS + skip
    found = client.zrevrangebyscore(
        k.RUNS_INDEX, "+inf", f"({since}", start=0, num=limit, withscores=True
    )
    with client.pipeline(transaction=False) as pipe:
        for run_id, _ in found:
            pipe.hgetall(k.run_key(run_id))
        records = pipe.execute()
    return [
        (float(score), record)
        for (_, score), record in zip(found, records, strict=True)
        if record and not record.get("session_key", "").startswith(skip)
    ]


def latest_per_session(runs: list[tuple[float, dict[str, str]]]) -> dict[str, dict[str, str]]:
    """Each session's newest run (``runs`` newest first)."""
    latest: dict[str, dict[str, str]] = {}
    for _, run in runs:
        latest.setdefault(run.get("session_key", ""), run)
    return latest


def _quote(text: Any) -> str:
    flat = " ".join(str(text or "").split())
    return f'"{flat[:QUOTE_CHARS]}{"…" if len(flat) > QUOTE_CHARS else ""}"'


def last_exchange(client: redis.Redis, session_key: str) -> str:
    """The session's last saved exchange: the user's message, the tools called, the reply."""
    user, tools, reply = "", [], ""
    for raw in client.lrange(k.history_key(session_key), -HISTORY_TAIL, -1):
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        role = message.get("role")
        if role == "user":
            user, tools, reply = message.get("content"), [], ""
        elif role == "assistant":
            tools += [
                c.get("function", {}).get("name", "?") for c in message.get("tool_calls") or []
            ]
            reply = message.get("content") or reply
    if not user:
        return "no saved exchange"
    used = f"; tools: {', '.join(tools[:10])}" if tools else ""
    return f"user: {_quote(user)}{used}; reply: {_quote(reply)}"


def run_line(run: dict[str, str], now: float) -> str:
    queued = float(run.get("queued_at") or now)
    line = f"{run.get('run_id')} ({human(now - queued)} ago): {run.get('status')}"
    if "llm_calls" in run:  # counted when a run ends with a reply (not when it fails)
        line += f", {run['llm_calls']} LLM call(s), {run.get('tool_steps', '0')} tool step(s)"
    return line + (f", error: {_quote(run['error'])}" if run.get("error") else "")


def digest(client: redis.Redis, by_session: dict[str, list[dict[str, str]]]) -> str:
    """One block per session: its runs (newest first) and its last saved exchange."""
    now, blocks, size = time.time(), [], 0
    for session_key, runs in by_session.items():
        lines = [f"- session {session_key}:"]
        lines += [f"  - {run_line(run, now)}" for run in runs[:5]]
        if len(runs) > 5:
            lines.append(f"  - and {len(runs) - 5} older run(s)")
        lines.append(f"  - last saved exchange: {last_exchange(client, session_key)}")
        block = "\n".join(lines)
        if size + len(block) > MAX_DIGEST_CHARS and blocks:
            blocks.append(f"- and {len(by_session) - len(blocks)} more session(s)")
            break
        blocks.append(block)
        size += len(block)
    return "\n".join(blocks)
