"""The benchmark's printed report: host facts, then one Markdown table for the README."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import dataclass, field

from bench.analysis import PhaseMetrics, pct


@dataclass
class Resources:
    peak_rss_kb: dict[str, int] = field(default_factory=dict)
    cpu_sec: dict[str, float] = field(default_factory=dict)  # during the phase


def host_lines() -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return [
        f"date: {now}",
        f"uname -m: {platform.machine()}",
        f"cores: {os.cpu_count()}",
        f"python: {sys.version.split()[0]} ({platform.python_implementation()})",
    ]


def _p(values: list[float]) -> str:
    return f"{pct(values, 50):.1f} / {pct(values, 99):.1f}"


def _cpu(res: Resources, wall: float) -> str:
    parts = [f"{name} {sec:.1f}s ({sec / wall * 100:.0f}%)" for name, sec in res.cpu_sec.items()]
    return ", ".join(parts)


def table(
    main: PhaseMetrics,
    wide: PhaseMetrics | None,
    main_res: Resources,
    wide_res: Resources | None,
    ping_ms: list[float],
    *,
    delay: float,
    concurrency: int,
    redis_mode: str,
    wide_delay: float = 0.0,
) -> str:
    ceiling = main.sessions / delay
    noop = pct(ping_ms, 50)
    over = pct(main.overhead_ms, 50)
    rows: list[tuple[str, str]] = [
        ("setup", f"1 worker (threads pool, concurrency {concurrency}), 1 ingress, "
                  f"redis-server ({redis_mode}), scripted LLM {delay * 1000:.0f} ms/call"),
        (f"throughput, {main.sessions} sessions × {main.messages} msgs (msg/s)",
         f"{main.msg_per_sec:.1f} (ceiling {ceiling:.0f} = sessions / LLM latency; "
         f"{main.done}/{main.total} in {main.wall_sec:.1f} s)"),
        ("ingress accept rate, 202s (msg/s); 503s retried by the senders",
         f"{main.accept_per_sec:.0f}; {main.retried_503}"),
        ("framework overhead per message p50 / p99 (ms) = finished − started − LLM latency",
         _p(main.overhead_ms)),
        ("dispatch latency, first message of a session p50 / p99 (ms) = started − queued",
         _p(main.dispatch_ms)),
        ("hand-off to the next queued message of a session p50 / p99 (ms)", _p(main.handoff_ms)),
        ("end-to-end 202 → reply on stream p50 / p99 (ms, includes waiting behind the session's "
         "earlier messages)", _p(main.e2e_ms)),
        ("Celery no-op round trip `claw.health.ping` p50 / p99 (ms, 200 sequential)",
         _p(ping_ms)),
        ("overhead p50 / no-op round trip p50", f"{over / noop:.2f}×" if noop == noop else "n/a"),
        ("dispatch p50 / no-op round trip p50",
         f"{pct(main.dispatch_ms, 50) / noop:.2f}×" if noop == noop else "n/a"),
        ("ordering violations (LLM arrival order / Redis history)",
         f"{main.order_violations} / {main.history_violations}"),
        ("lost / duplicated replies / duplicated LLM calls",
         f"{main.lost} / {main.dup_replies} / {main.dup_llm}"),
        ("peak runs in flight (LLM server)", f"{main.peak_llm_concurrency}"),
        ("worker RSS peak (MB)", f"{main_res.peak_rss_kb.get('worker', 0) / 1024:.0f}"),
        ("ingress RSS peak (MB)", f"{main_res.peak_rss_kb.get('ingress', 0) / 1024:.0f}"),
        ("CPU during the phase (share of one core)", _cpu(main_res, main.wall_sec)),
    ]  # fmt: skip
    if wide is not None and wide_res is not None:
        rows += [
            (f"wide phase: {wide.sessions} sessions × {wide.messages} msgs, LLM latency "
             f"{wide_delay * 1000:.0f} ms, throughput (msg/s)",
             f"{wide.msg_per_sec:.1f} ({wide.done}/{wide.total} in {wide.wall_sec:.1f} s)"),
            ("wide phase: peak runs in flight (LLM server)", f"{wide.peak_llm_concurrency}"),
            ("wide phase: overhead p50 / p99 (ms)", _p(wide.overhead_ms)),
            ("wide phase: dispatch latency p50 / p99 (ms)", _p(wide.dispatch_ms)),
            ("wide phase: ordering violations / lost / duplicated",
             f"{wide.order_violations + wide.history_violations} / {wide.lost} / "
             f"{wide.dup_replies + wide.dup_llm}"),
            ("wide phase: 503s retried by the senders", f"{wide.retried_503}"),
            ("wide phase: worker RSS peak (MB)",
             f"{wide_res.peak_rss_kb.get('worker', 0) / 1024:.0f}"),
            ("wide phase: CPU (share of one core)", _cpu(wide_res, wide.wall_sec)),
        ]  # fmt: skip
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def problems(*phases: PhaseMetrics | None) -> list[str]:
    out = []
    for m in phases:
        if m is None:
            continue
        if m.errors or m.failed or m.retried_503:
            out.append(
                f"phase {m.prefix}: order {m.order_violations}, history {m.history_violations}, "
                f"lost {m.lost}, dup replies {m.dup_replies}, dup LLM {m.dup_llm}, "
                f"send errors {m.send_errors}, failed {m.failed}"
            )
        out += [f"phase {m.prefix}: {note}" for note in m.notes[:10]]
    return out
