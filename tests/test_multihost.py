"""Two hosts, as the fleet runs in production: each its own processes, HOME, $CLAW_HOME,
config file and log directory, sharing only an external redis-server and the workspace,
started with compose.yaml's own commands. Both take work; when host A's worker and beat
are killed with ``kill -9`` in the middle of runs, host B finishes every message exactly
once and in order, and B's standby beat takes over the schedule."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time
from collections import Counter
from typing import Any

import httpx

from claw_worker import constants as k
from tests.fixtures.hosts import Host
from tests.fixtures.procs import free_port, wait_for


def host_config(llm_url: str, workspace: str) -> dict[str, Any]:
    # redis.url is not here: compose gives it as CLAW_REDIS_URL, and so does Host.env.
    return {
        "providers": {
            "proxy": {
                "api_base": llm_url,
                "api_key": "sk-test-secret-key-123456",
                "models": ["test-model"],
            }
        },
        # Rate limits off, as in every fleet test: 132 messages from one address within
        # seconds would meet the per-address burst (100); test_transport_security.py tests
        # the limits across two replicas.
        "gateway": {
            "port": free_port(),
            "rate_limit": {"per_ip_per_min": 0, "per_sender_per_min": 0},
        },
        "agents": {"defaults": {"workspace": workspace}},
        "worker": {"concurrency": 20, "lease_sec": 3, "sweep_interval_sec": 1},
        "beat": {"lock_timeout_sec": 8},
    }


def start_host(host: Host, llm_url: str, workspace: str) -> str:
    """Write the host's config and start its ingress, worker and beat; its worker's name."""
    host.write_config(host_config(llm_url, workspace))
    host.start("ingress")
    host.start("worker")
    host.start("beat")
    port = host.read_config()["gateway"]["port"]
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200,
             timeout=60, what=f"host {host.name}'s ingress")  # fmt: skip
    return host.wait_worker_ready()


def base_url(host: Host) -> str:
    return f"http://127.0.0.1:{host.read_config()['gateway']['port']}"


def send_all(urls: list[str], texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """Send each session's texts in order (sessions side by side, spread over the
    ingresses); the message ids by session."""
    ids: dict[str, list[str]] = {}

    def send(index: int, session: str) -> None:
        with httpx.Client(base_url=urls[index % len(urls)], timeout=30) as http:
            for text in texts[session]:
                resp = http.post("/api/message", json={"text": text, "session": session})
                assert resp.status_code == 202, resp.text
                ids.setdefault(session, []).append(resp.json()["message_id"])

    with cf.ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda item: send(*item), enumerate(texts)))
    return ids


def records(redis_client: Any, ids: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    pipe = redis_client.pipeline(transaction=False)
    flat = [(session, mid) for session, mids in ids.items() for mid in mids]
    for session, mid in flat:
        pipe.hgetall(k.message_key(session, mid))
    return {mid: rec for (_, mid), rec in zip(flat, pipe.execute(), strict=True)}


def all_done(redis_client: Any, ids: dict[str, list[str]]) -> bool:
    return all(r.get("status") == "done" for r in records(redis_client, ids).values())


def run_workers(redis_client: Any, recs: dict[str, dict[str, str]]) -> dict[str, str]:
    """message id -> node name of the worker that ran its (last) run."""
    pipe = redis_client.pipeline(transaction=False)
    for rec in recs.values():
        pipe.hget(k.run_key(rec["run_id"]), "worker")
    return dict(zip(recs, pipe.execute(), strict=True))


def running_on(redis_client: Any, ids: dict[str, list[str]], worker: str) -> bool:
    """Whether the worker named ``worker`` is running one of the messages now."""
    recs = records(redis_client, ids)
    return any(
        rec.get("status") == "running" and ran_on == worker
        for rec, ran_on in zip(recs.values(), run_workers(redis_client, recs).values(), strict=True)
    )


def replies_published(redis_client: Any) -> dict[str, int]:
    """message id -> how many replies to it are on the outbound stream."""
    entries = redis_client.xrange(k.OUTBOUND_STREAM)
    return Counter(json.loads(fields["data"])["message_id"] for _, fields in entries)


def test_two_hosts_share_the_work_and_host_b_finishes_after_kill_9_of_host_a(
    make_host, redis_server, llm_server, tmp_path
) -> None:
    workspace = str(tmp_path / "shared-workspace")
    a, b = make_host("a"), make_host("b")
    redis_client = redis_server.client()
    llm_server.default_delay = 0.1

    a_worker = start_host(a, llm_server.base_url, workspace)
    wait_for(a.beat_is_active, timeout=30, what="host A's beat to take the lock")
    b_worker = start_host(b, llm_server.base_url, workspace)
    assert a_worker != b_worker
    urls = [base_url(a), base_url(b)]

    # 1. A hundred sessions over both ingresses: both hosts' workers take some.
    first = send_all(urls, {f"api:wide-{n}": [f"wide {n}"] for n in range(100)})
    wait_for(lambda: all_done(redis_client, first), timeout=90, interval=0.2,
             what="the 100 sessions to be answered")  # fmt: skip
    ran_on = run_workers(redis_client, records(redis_client, first))
    counts = {name: list(ran_on.values()).count(name) for name in (a_worker, b_worker)}
    assert counts[a_worker] > 0 and counts[b_worker] > 0, counts
    assert sum(counts.values()) == 100

    # 2. Ordered sessions with slow answers; kill -9 host A's worker and beat mid-run.
    llm_server.default_delay = 1.0
    texts = {f"api:ordered-{n}": [f"ordered {n} #{i}" for i in range(4)] for n in range(8)}
    second = send_all(urls, texts)

    wait_for(lambda: running_on(redis_client, second, a_worker), timeout=30,
             what="host A to be running a message")  # fmt: skip
    a.kill("worker")
    a.kill("beat")
    killed_at = time.time()

    wait_for(lambda: all_done(redis_client, second), timeout=120, interval=0.3,
             what="host B to finish every message")  # fmt: skip
    recs = records(redis_client, second)
    ran_on = run_workers(redis_client, recs)
    finished_after = [mid for mid, r in recs.items() if float(r["finished_at"]) > killed_at]
    assert finished_after and all(ran_on[mid] == b_worker for mid in finished_after)
    assert any(int(r["attempts"]) > 1 for r in recs.values()), "a run was cut off on A"

    # Exactly once: one reply per message on the outbound stream, the right one ...
    published = replies_published(redis_client)
    for session, mids in second.items():
        for text, mid in zip(texts[session], mids, strict=True):
            assert published.get(mid) == 1, (session, text)
            assert recs[mid]["reply"] == f"echo: {text}"
    # ... and in order: each session's history holds its turns once, in the order sent.
    for session, sent in texts.items():
        history = [json.loads(m) for m in redis_client.lrange(k.history_key(session), 0, -1)]
        assert [m["content"] for m in history if m["role"] == "user"] == sent

    # B's beat took the schedule over (its sweeper re-sent the drains of A's sessions).
    wait_for(b.beat_is_active, timeout=30, what="host B's beat to take over")
    # Each host wrote its own logs, named by node name, in its own directory.
    assert (a.logs / f"{a_worker}.log").exists() and (b.logs / f"{b_worker}.log").exists()


def test_a_worker_stopped_warmly_finishes_its_turns_and_hands_the_sessions_over(
    make_host, redis_server, llm_server, tmp_path
) -> None:
    """``docker compose stop`` (SIGTERM): host A's worker finishes the message under way in
    each session it drains, then leaves the rest to host B, instead of draining on (one
    session's whole backlog could outlast the stop grace period and end in SIGKILL)."""
    workspace = str(tmp_path / "shared-workspace")
    a, b = make_host("a"), make_host("b")
    redis_client = redis_server.client()
    a_worker = start_host(a, llm_server.base_url, workspace)
    b_worker = start_host(b, llm_server.base_url, workspace)
    llm_server.default_delay = 2.0
    texts = {f"api:warm-{n}": [f"warm {n} #{i}" for i in range(4)] for n in range(4)}
    sent = send_all([base_url(a), base_url(b)], texts)
    wait_for(lambda: running_on(redis_client, sent, a_worker), timeout=30,
             what="host A to be running a message")  # fmt: skip
    a.procs["worker"].send_signal(signal.SIGTERM)  # what compose's stop sends to PID 1
    stopped_at = time.time()

    wait_for(lambda: a.procs["worker"].poll() is not None, timeout=60,
             what="host A's worker to stop")  # fmt: skip
    wait_for(lambda: all_done(redis_client, sent), timeout=90, interval=0.3,
             what="host B to finish the rest")  # fmt: skip
    recs = records(redis_client, sent)
    ran_on = run_workers(redis_client, recs)
    # A turn A took as the signal arrived may start a moment after it (the handler runs
    # between two steps of the main thread): none later. Draining on, A would start the
    # next turn of a session only when one finished, 2 s (the LLM's delay) later.
    started = {mid: float(redis_client.hget(k.run_key(rec["run_id"]), "started_at") or 0)
               for mid, rec in recs.items()}  # fmt: skip
    late_on_a = [mid for mid in recs if ran_on[mid] == a_worker and started[mid] > stopped_at + 0.5]
    assert not late_on_a, "host A started new turns after SIGTERM"
    assert all(int(r["attempts"]) == 1 for r in recs.values())  # none cut off and re-run
    assert any(ran_on[mid] == b_worker for mid in recs)
    published = replies_published(redis_client)
    assert all(published.get(mid) == 1 for mid in recs)
    for session, wanted in texts.items():
        history = [json.loads(m) for m in redis_client.lrange(k.history_key(session), 0, -1)]
        assert [m["content"] for m in history if m["role"] == "user"] == wanted
