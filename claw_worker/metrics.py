"""Prometheus metrics of the fleet's processes: defined here, counted where things happen.

Import-light (prometheus_client and the standard library only), as the ingress imports it.
The ingress serves them at ``GET /metrics`` (behind ``gateway.token``); each worker process
serves its own on ``worker.metrics_host:worker.metrics_port`` (:func:`serve`; the next free
port when taken, so several workers share a host) and records where in the process
registry, for ``clawctl status --json``. A prefork pool's children each serve their own.

Labels are bounded: channel names, the config's proxy and model names, tool names, outcomes.
Never chat ids, session keys, user text or secrets. As a safety net, a label that has seen
``MAX_LABEL_VALUES`` distinct values reads ``other`` from then on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No ``*_created`` series (a timestamp per labelled counter): they double every scrape and
# Prometheus itself does not use them.
disable_created_metrics()

MAX_LABEL_VALUES = 100
PORT_TRIES = 32  # worker.metrics_port and the 31 ports above it
OTHER = "other"

_seen: dict[str, set[str]] = {}
_seen_lock = threading.Lock()


def bounded(kind: str, value: str) -> str:
    """``value`` as a label of ``kind``, or ``other`` past MAX_LABEL_VALUES distinct ones."""
    value = value or "-"
    seen = _seen.get(kind)
    if seen is not None and value in seen:
        return value
    with _seen_lock:
        seen = _seen.setdefault(kind, set())
        if value in seen or len(seen) < MAX_LABEL_VALUES:
            seen.add(value)
            return value
    return OTHER


# -- the ingress -------------------------------------------------------------------------------

MESSAGES_IN = Counter(
    "claw_ingress_messages", "Inbound messages by channel and what became of them "
    "(queued, duplicate, refused, command).", ["channel", "outcome"],
)  # fmt: skip
STORE_UNAVAILABLE = Counter(
    "claw_ingress_store_unavailable", "Requests answered 503 because Redis did not answer."
)
DELIVERIES = Counter(
    "claw_delivery_messages", "Outbound messages by channel and outcome (delivered, refused, "
    "retry_later).", ["channel", "outcome"],
)  # fmt: skip
DELIVERY_PARTS = Counter("claw_delivery_parts", "Message parts sent by channel.", ["channel"])
DELIVERY_RETRIES = Counter(
    "claw_delivery_retries", "Sends that failed and were tried again, by channel.", ["channel"]
)

# -- the worker --------------------------------------------------------------------------------

QUEUE_WAIT = Histogram(
    "claw_queue_wait_seconds", "From a message stored to its first run starting, by channel.",
    ["channel"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)  # fmt: skip
RUNS = Counter(
    "claw_runs", "Agent runs by channel and outcome (done, failed, cancelled, retrying, "
    "interrupted).", ["channel", "outcome"],
)  # fmt: skip
RUN_DURATION = Histogram(
    "claw_run_duration_seconds", "Agent run duration by outcome.", ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)  # fmt: skip
RUNS_IN_PROGRESS = Gauge("claw_runs_in_progress", "Agent runs going on in this process.")
LLM_REQUESTS = Counter(
    "claw_llm_requests", "LLM calls by proxy, model, protocol and outcome (ok or the error "
    "kind).", ["proxy", "model", "protocol", "outcome"],
)  # fmt: skip
LLM_LATENCY = Histogram(
    "claw_llm_request_duration_seconds", "LLM call latency by proxy, model and protocol.",
    ["proxy", "model", "protocol"], buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)  # fmt: skip
LLM_TOKENS = Counter(
    "claw_llm_tokens", "LLM tokens by proxy, model, protocol and kind (prompt, completion).",
    ["proxy", "model", "protocol", "kind"],
)  # fmt: skip
LLM_FALLBACKS = Counter(
    "claw_llm_fallbacks", "Switches away from a proxy's model by reason (the error kind, or "
    "breaker_open).", ["proxy", "model", "reason"],
)  # fmt: skip
BREAKER_OPENED = Counter("claw_llm_breaker_opened", "Circuit breakers opened.", ["proxy"])
TOOL_CALLS = Counter(
    "claw_tool_calls", "Tool calls by tool and outcome (ok, error).", ["tool", "outcome"]
)
TOOL_DURATION = Histogram(
    "claw_tool_duration_seconds", "Tool call duration by tool.", ["tool"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 15, 60, 300),
)  # fmt: skip
LOCK_ATTEMPTS = Counter(
    "claw_resource_lock_attempts", "Tries to take a message's resource keys by outcome "
    "(acquired, waiting).", ["outcome"],
)  # fmt: skip
LOCKS_HELD = Gauge("claw_resource_locks_held", "Key sets held by this process's runs.")
CRON_FIRES = Counter(
    "claw_cron_fires", "Cron job fires by outcome (fired, skipped, duplicate, disabled).",
    ["outcome"],
)  # fmt: skip
HEARTBEAT_TICKS = Counter(
    "claw_heartbeat_ticks", "Heartbeat ticks by what they did (submitted, idle, busy, "
    "disabled).", ["action"],
)  # fmt: skip


# -- call sites ---------------------------------------------------------------------------------


def message_in(channel: str, outcome: str) -> None:
    MESSAGES_IN.labels(bounded("channel", channel), outcome).inc()


def delivered(channel: str, outcome: str, parts: int = 0) -> None:
    name = bounded("channel", channel)
    DELIVERIES.labels(name, outcome).inc()
    if parts:
        DELIVERY_PARTS.labels(name).inc(parts)


def delivery_retry(channel: str) -> None:
    DELIVERY_RETRIES.labels(bounded("channel", channel)).inc()


def queue_wait(channel: str, seconds: float) -> None:
    QUEUE_WAIT.labels(bounded("channel", channel)).observe(max(0.0, seconds))


def run_finished(channel: str, outcome: str, seconds: float) -> None:
    RUNS.labels(bounded("channel", channel), outcome).inc()
    RUN_DURATION.labels(outcome).observe(seconds)


def llm_call(
    proxy: str, model: str, protocol: str, outcome: str, seconds: float, usage: dict[str, int]
) -> None:
    labels = (bounded("proxy", proxy), bounded("model", model), protocol or "-")
    LLM_REQUESTS.labels(*labels, outcome).inc()
    LLM_LATENCY.labels(*labels).observe(seconds)
    for kind in ("prompt", "completion"):
        count = usage.get(f"{kind}_tokens")
        if isinstance(count, int) and count > 0:
            LLM_TOKENS.labels(*labels, kind).inc(count)


def llm_fallback(proxy: str, model: str, reason: str) -> None:
    LLM_FALLBACKS.labels(bounded("proxy", proxy), bounded("model", model), reason).inc()


def breaker_opened(proxy: str) -> None:
    BREAKER_OPENED.labels(bounded("proxy", proxy)).inc()


def tool_call(tool: str, ok: bool, seconds: float) -> None:
    name = bounded("tool", tool)
    TOOL_CALLS.labels(name, "ok" if ok else "error").inc()
    TOOL_DURATION.labels(name).observe(seconds)


@contextmanager
def run_in_progress() -> Iterator[None]:
    RUNS_IN_PROGRESS.inc()
    try:
        yield
    finally:
        RUNS_IN_PROGRESS.dec()


# -- serving (the worker: the ingress serves them as a route of its own) ------------------------

_target: dict[str, object] | None = None


def serve(host: str, port: int) -> int | None:
    """Serve /metrics on ``host:port``, or on the next free port of the PORT_TRIES from
    there; returns the port, None when every one was taken. Once per process."""
    global _target
    from prometheus_client import start_http_server

    if _target is not None:
        return int(_target["port"])  # type: ignore[call-overload]
    for candidate in range(port, min(port + PORT_TRIES, 65536)):
        try:
            start_http_server(candidate, addr=host)
        except OSError:
            continue
        _target = {"host": host, "port": candidate, "since": time.time()}
        return candidate
    return None


def target() -> dict[str, object] | None:
    """Where this process serves /metrics (``{"host", "port"}``), None when it does not."""
    return None if _target is None else {"host": _target["host"], "port": _target["port"]}
