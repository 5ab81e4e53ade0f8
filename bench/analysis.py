"""Metrics of one phase: throughput, framework overhead, dispatch latency, correctness."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from bench.load import PhaseData


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class PhaseMetrics:
    prefix: str
    sessions: int
    messages: int
    total: int
    accepted: int
    done: int
    failed: int
    wall_sec: float
    msg_per_sec: float
    accept_per_sec: float
    overhead_ms: list[float] = field(default_factory=list)  # finished - started - LLM delay
    dispatch_ms: list[float] = field(default_factory=list)  # first message: started - queued
    handoff_ms: list[float] = field(default_factory=list)  # next started - prev finished
    e2e_ms: list[float] = field(default_factory=list)  # 202 -> reply seen on the stream
    order_violations: int = 0
    history_violations: int = 0
    lost: int = 0
    dup_replies: int = 0
    dup_llm: int = 0
    send_errors: int = 0
    peak_llm_concurrency: int = 0
    llm_requests: int = 0
    retried_503: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return (
            self.order_violations + self.history_violations + self.lost + self.dup_replies
            + self.dup_llm + self.send_errors
        )  # fmt: skip


def analyse(data: PhaseData, llm_delay: float) -> PhaseMetrics:
    total = data.sessions * data.messages
    by_session: dict[int, list] = {}
    for sent in data.sent:
        by_session.setdefault(sent.session, []).append(sent)
    done = failed = 0
    last_finished = 0.0
    overhead, dispatch, handoff, e2e = [], [], [], []
    for sent in data.sent:
        rec = data.records.get(sent.message_id) or {}
        status = rec.get("status")
        if status == "done":
            done += 1
        elif status == "failed":
            failed += 1
        if "finished_at" in rec and "started_at" in rec:
            fin, start = float(rec["finished_at"]), float(rec["started_at"])
            last_finished = max(last_finished, fin)
            overhead.append((fin - start - llm_delay) * 1000)
        if sent.message_id in data.seen_at:
            e2e.append((data.seen_at[sent.message_id] - sent.accepted_at) * 1000)
    for msgs in by_session.values():
        msgs.sort(key=lambda s: s.index)
        first = data.records.get(msgs[0].message_id) or {}
        if "started_at" in first and "queued_at" in first:
            dispatch.append((float(first["started_at"]) - float(first["queued_at"])) * 1000)
        for prev, cur in pairwise(msgs):
            p, c = data.records.get(prev.message_id, {}), data.records.get(cur.message_id, {})
            if "finished_at" in p and "started_at" in c and "queued_at" in c:
                ready = max(float(p["finished_at"]), float(c["queued_at"]))
                handoff.append((float(c["started_at"]) - ready) * 1000)

    wall = (last_finished - data.first_send) if last_finished else float("nan")
    accept_wall = max(data.last_accept - data.first_send, 1e-9)
    m = PhaseMetrics(
        prefix=data.prefix, sessions=data.sessions, messages=data.messages, total=total,
        accepted=len(data.sent), done=done, failed=failed, wall_sec=wall,
        msg_per_sec=done / wall if wall == wall and wall > 0 else 0.0,
        accept_per_sec=len(data.sent) / accept_wall,
        overhead_ms=overhead, dispatch_ms=dispatch, handoff_ms=handoff, e2e_ms=e2e,
    )  # fmt: skip
    m.send_errors = len(data.send_errors) + (total - len(data.sent) if data.send_errors else 0)
    m.notes.extend(data.send_errors[:5])
    m.retried_503 = data.retried_503
    if data.retried_503:
        m.notes.append(f"ingress answered 503 {data.retried_503} times (retried): {data.last_503}")
    # Lost: accepted (202) but no reply on the stream, or not finished as done.
    m.lost = sum(
        1 for s in data.sent
        if s.message_id not in data.replies or data.records.get(s.message_id, {}).get("status") != "done"
    )  # fmt: skip
    m.dup_replies = sum(n - 1 for n in data.replies.values() if n > 1)
    m.llm_requests = sum(len(v) for v in data.llm_order.values())
    m.peak_llm_concurrency = int(data.llm_stats.get("peak_concurrency", 0))
    for session, msgs in by_session.items():
        expected = [s.index for s in msgs]  # send order
        seen = data.llm_order.get(session, [])
        m.dup_llm += len(seen) - len(set(seen))
        # Order: the first LLM request of each message must follow the send order.
        firsts = list(dict.fromkeys(seen))
        m.order_violations += sum(1 for a, b in pairwise(firsts) if b < a)
        if sorted(firsts) != expected:
            m.notes.append(f"s{session}: LLM saw {len(firsts)} of {len(expected)} messages")
        if data.histories.get(session) != expected:
            m.history_violations += 1
            m.notes.append(f"s{session}: history user turns {data.histories.get(session)}")
    if data.timed_out:
        m.notes.append("deadline passed before every accepted message had a reply")
    return m
