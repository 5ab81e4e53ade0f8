"""One load phase: N sessions x M messages over real HTTP, then collect what happened.

Each session has one sender coroutine (own keep-alive connection, bench.http) that POSTs its
messages in order (awaiting each 202).
A reader follows the outbound stream from the bench process (count per message_id, for
duplicates) until every accepted message has a reply or the deadline passes. Afterwards the
message records, the session histories and the LLM server's recorded requests are read.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.http import Connection, HTTPError
from claw_worker import constants as k

RETRIES_503 = 50
MARK = re.compile(r"bench (\w+)-s(\d+)-m(\d+)\b")


def marker(prefix: str, session: int, index: int) -> str:
    return f"bench {prefix}-s{session}-m{index}"


def session_key(prefix: str, session: int) -> str:
    return f"api:bench-{prefix}-s{session}"


@dataclass
class Sent:
    session: int
    index: int
    message_id: str
    accepted_at: float  # bench clock (unix seconds) when the 202 came back


@dataclass
class PhaseData:
    prefix: str
    sessions: int
    messages: int
    first_send: float = 0.0
    last_accept: float = 0.0
    sent: list[Sent] = field(default_factory=list)
    send_errors: list[str] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)  # message_id -> stream entries
    seen_at: dict[str, float] = field(default_factory=dict)  # first stream entry seen (bench)
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    histories: dict[int, list[int]] = field(default_factory=dict)  # user turns' indices
    llm_order: dict[int, list[int]] = field(default_factory=dict)  # indices, arrival order
    llm_stats: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    retried_503: int = 0  # 503 answers from the ingress, retried by the sender
    last_503: str = ""


async def _sender(host: str, port: int, data: PhaseData, session: int) -> None:
    conn = Connection(host, port)
    try:
        await _send_all(conn, data, session)
    finally:
        await conn.close()


async def _send_all(conn: Connection, data: PhaseData, session: int) -> None:
    sk = session_key(data.prefix, session)
    for index in range(data.messages):
        body = {"text": f"{marker(data.prefix, session, index)} hello", "session": sk}
        for attempt in range(RETRIES_503 + 1):
            try:
                status, raw = await conn.post_json("/api/message", body)
            except HTTPError as exc:
                data.send_errors.append(f"{sk} m{index}: {exc!r}")
                return  # later messages of this session would break its order: stop it
            if status != 503 or attempt == RETRIES_503:
                break
            # "message store unavailable": retry the same message (keeps the order), counted.
            data.retried_503 += 1
            data.last_503 = raw[:200].decode(errors="replace")
            await asyncio.sleep(0.05 * (attempt + 1))
        if status != 202:
            data.send_errors.append(f"{sk} m{index}: HTTP {status} {raw[:200]!r}")
            return
        now = time.time()
        data.last_accept = max(data.last_accept, now)
        data.sent.append(Sent(session, index, json.loads(raw)["message_id"], now))


async def _reader(
    client: aioredis.Redis, data: PhaseData, start_id: str, stop: asyncio.Event
) -> None:
    last = start_id
    while not stop.is_set():
        entries = await client.xread({k.OUTBOUND_STREAM: last}, block=200, count=1000)
        now = time.time()
        for _stream, items in entries or []:
            for entry_id, fields in items:
                last = entry_id
                mid = json.loads(fields["data"])["message_id"]
                data.replies[mid] = data.replies.get(mid, 0) + 1
                data.seen_at.setdefault(mid, now)


async def run_phase(
    *,
    base_url: str,
    redis_url: str,
    llm_url: str,
    prefix: str,
    sessions: int,
    messages: int,
    deadline_sec: float,
) -> PhaseData:
    data = PhaseData(prefix, sessions, messages)
    rclient = aioredis.Redis.from_url(redis_url, decode_responses=True)
    url = httpx.URL(base_url)
    try:
        newest = await rclient.xrevrange(k.OUTBOUND_STREAM, count=1)
        start_id = newest[0][0] if newest else "0-0"
        stop = asyncio.Event()
        reader = asyncio.create_task(_reader(rclient, data, start_id, stop))
        data.first_send = time.time()
        await asyncio.gather(*(_sender(url.host, url.port, data, s) for s in range(sessions)))
        deadline = time.monotonic() + deadline_sec
        wanted = {s.message_id for s in data.sent}
        while not wanted <= data.replies.keys():
            if time.monotonic() > deadline or reader.done():
                data.timed_out = True
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let a (buggy) duplicate reply show up too
        stop.set()
        await reader
        await _collect(rclient, data)
    finally:
        await rclient.aclose()
    await _collect_llm(llm_url, data)
    return data


async def _collect(client: aioredis.Redis, data: PhaseData) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for s in data.sent:
            pipe.hgetall(k.message_key(session_key(data.prefix, s.session), s.message_id))
        records = await pipe.execute()
    data.records = {s.message_id: r for s, r in zip(data.sent, records, strict=True)}
    async with client.pipeline(transaction=False) as pipe:
        for session in range(data.sessions):
            pipe.lrange(k.history_key(session_key(data.prefix, session)), 0, -1)
        histories = await pipe.execute()
    for session, raw in enumerate(histories):
        turns = []
        for item in raw:
            msg = json.loads(item)
            if msg.get("role") == "user" and (m := MARK.search(str(msg.get("content")))):
                turns.append(int(m.group(3)))
        data.histories[session] = turns


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


async def _collect_llm(llm_url: str, data: PhaseData) -> None:
    async with httpx.AsyncClient(base_url=llm_url, timeout=120) as client:
        data.llm_stats = (await client.get("/_control/stats")).json()
        bodies = (await client.get("/_control/requests")).json()["requests"]
    for body in bodies:
        m = MARK.search(last_user_text(body))
        if m and m.group(1) == data.prefix:
            data.llm_order.setdefault(int(m.group(2)), []).append(int(m.group(3)))
