"""The Celery commands as users type them (compose.yaml's), against an external Redis:
the plain worker takes pool, concurrency and queues from the config (flags still override)
and logs to a file named by its node name; the plain beat runs on RedBeat, stays up and
writes no file; a standby beat takes over from a killed one; Flower shows the fleet's tasks
without message text or secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from claw_worker import constants as k
from claw_worker.celery_config import sender_app
from claw_worker.config import Config
from tests.fixtures.hosts import Host, compose_command
from tests.fixtures.procs import free_port, wait_for

SECRET_KEY = "sk-flower-must-not-see-this-0123456789"


def base_config(llm_url: str = "http://127.0.0.1:9/v1", **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "providers": {"proxy": {"api_base": llm_url, "api_key": SECRET_KEY, "models": ["m"]}},
        "gateway": {"port": free_port()},
        "worker": {"pool": "threads", "concurrency": 7, "lease_sec": 3, "sweep_interval_sec": 1},
        "beat": {"lock_timeout_sec": 6},
    }
    config.update(sections)
    return config


@pytest.fixture
def inspect(redis_server) -> Any:
    app = sender_app(Config.model_validate({"redis": {"url": redis_server.url}}))

    def ask(node: str, what: str) -> Any:
        replies = getattr(app.control.inspect(destination=[node], timeout=5), what)() or {}
        return replies.get(node)

    return ask


def test_compose_runs_the_plain_commands() -> None:
    for service in ("worker", "beat", "flower"):
        assert compose_command(service)[1:] == ["-A", "claw_worker", service]


def test_plain_worker_takes_pool_concurrency_and_queues_from_the_config(make_host, inspect) -> None:
    host: Host = make_host("a")
    host.write_config(base_config())
    workspace = host.claw_home / "workspace"  # never onboarded: a user's own AGENTS.md only
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "AGENTS.md").write_text("my own rules\n")
    host.start("worker")
    name = host.wait_worker_ready()
    assert name.startswith("worker-") and name.endswith(f"@{name.split('@')[1]}")
    # The worker filled in what onboard would have (a fresh container volume has nothing,
    # and the Sentinel's first round alerted about it), rewriting nothing.
    assert (workspace / "AGENTS.md").read_text() == "my own rules\n"
    assert (workspace / "SOUL.md").is_file() and (workspace / "USER.md").is_file()
    assert (workspace / "memory").is_dir() and (workspace / "skills").is_dir()
    stats = wait_for(lambda: inspect(name, "stats"), what="worker stats")
    assert stats["pool"]["implementation"] == "celery.concurrency.thread:TaskPool"
    assert stats["pool"]["max-concurrency"] == 7
    queues = {q["name"] for q in inspect(name, "active_queues")}
    assert queues == set(k.ALL_QUEUES)

    # Flags still override, the default pool (prefork) included.
    second = make_host("b")
    second.write_config(base_config())
    second.start("worker", "-P", "prefork", "-c", "2", "-Q", "sessions", "-n", "narrow@%h")
    narrow = second.wait_worker_ready()
    assert narrow.startswith("narrow@")
    stats = wait_for(lambda: inspect(narrow, "stats"), what="second worker stats")
    assert stats["pool"]["implementation"] == "celery.concurrency.prefork:TaskPool"
    assert stats["pool"]["max-concurrency"] == 2
    assert {q["name"] for q in inspect(narrow, "active_queues")} == {"sessions"}
    assert (second.logs / f"{narrow}.log").exists()


def test_two_plain_workers_on_one_host_write_their_own_log_files(make_host) -> None:
    host: Host = make_host("a")
    host.write_config(base_config())
    first = host.start("worker")
    name1 = host.wait_worker_ready()
    host.procs["worker-1"] = first
    host.start("worker")  # the same command again, as --scale does
    name2 = wait_for(
        lambda: [n for n in _ready_names(host) if n != name1], what="the second worker"
    )[0]
    assert name1 != name2
    for name in (name1, name2):
        lines = [json.loads(line) for line in (host.logs / f"{name}.log").read_text().splitlines()]
        assert any(line["event"] == f"{name} ready." for line in lines)
        assert {line["pid"] for line in lines} == {int(name.split("-")[1].split("@")[0])}


def _ready_names(host: Host) -> list[str]:
    import re

    return re.findall(r"(\S+@\S+) ready\.", host.output("worker"))


def sweeps(redis_client: Any) -> int:
    meta = redis_client.hget(f"{k.BEAT_KEY_PREFIX}session-sweeper", "meta")
    return int(json.loads(meta).get("total_run_count", 0)) if meta else 0


def test_plain_beat_stays_up_on_redbeat_and_writes_no_file(make_host, redis_server) -> None:
    host: Host = make_host("a")
    host.write_config(base_config())
    proc = host.start("beat")
    client = redis_server.client()
    wait_for(lambda: sweeps(client) >= 3, timeout=30, what="beat to send three sweeps")
    assert proc.poll() is None, host.output("beat")
    assert client.exists(k.BEAT_LOCK_KEY)
    schedule_files = [
        p for p in host.root.rglob("*") if "schedule" in p.name or p.name.startswith("celerybeat")
    ]
    assert schedule_files == []
    assert "redbeat" in host.output("beat").lower() or "claw:beat::lock" in host.output("beat")


def test_a_standby_beat_waits_and_takes_over_after_kill_9(make_host, redis_server) -> None:
    client = redis_server.client()
    a, b = make_host("a"), make_host("b")
    for host in (a, b):
        host.write_config(base_config())
    a.start("beat")
    wait_for(a.beat_is_active, timeout=30, what="beat A to take the lock")
    b.start("beat")
    # B waits: the schedule goes on under A, and B does not take the lock.
    start = sweeps(client)
    wait_for(lambda: sweeps(client) >= start + 3, timeout=30, what="three sweeps under beat A")
    assert not b.beat_is_active()

    a.kill("beat")
    killed = time.monotonic()
    wait_for(b.beat_is_active, timeout=60, what="beat B to take over")
    took_over_in = time.monotonic() - killed
    assert took_over_in < 60
    after = sweeps(client)
    wait_for(lambda: sweeps(client) >= after + 2, timeout=30, what="sweeps under beat B")
    print(f"standby beat took over {took_over_in:.1f}s after kill -9 (lock_timeout_sec 6)")


def test_flower_shows_drain_and_sweep_tasks_without_text_or_secrets(
    make_host, llm_server, tmp_path: Path
) -> None:
    host: Host = make_host("a")
    host.write_config(base_config(llm_server.base_url))
    host.start("ingress")
    host.start("worker")
    host.start("beat")
    port = free_port()
    host.start("flower", FLOWER_PORT=str(port), FLOWER_ADDRESS="127.0.0.1",
               FLOWER_BASIC_AUTH="admin:flower-pw")  # fmt: skip
    host.wait_worker_ready()
    gateway = f"http://127.0.0.1:{host.read_config()['gateway']['port']}"
    wait_for(lambda: httpx.get(f"{gateway}/health").status_code == 200, timeout=60,
             what="ingress")  # fmt: skip
    flower = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{flower}/healthcheck").status_code == 200, timeout=60,
             what="flower")  # fmt: skip
    assert httpx.get(f"{flower}/api/tasks").status_code == 401  # never without the password

    text = "my card PIN is 4321 and the password is hunter2-zz"
    resp = httpx.post(f"{gateway}/api/message", timeout=60,
                      json={"text": text, "session": "api:flower", "wait": True})  # fmt: skip
    assert resp.status_code == 200, resp.text

    def tasks() -> dict[str, Any]:
        r = httpx.get(f"{flower}/api/tasks", auth=("admin", "flower-pw"), timeout=10)
        return r.json() if r.status_code == 200 else {}

    def finished(name: str) -> list[dict[str, Any]]:
        return [t for t in tasks().values() if t["name"] == name and t["state"] == "SUCCESS"]

    drains = wait_for(lambda: finished(k.TASK_DRAIN), timeout=30, what="a drain in Flower")
    sweep = wait_for(lambda: finished(k.TASK_SWEEP), timeout=30, what="a sweep in Flower")
    assert any(t["args"] == "['api:flower']" for t in drains)
    info = httpx.get(f"{flower}/api/task/info/{drains[0]['uuid']}",
                     auth=("admin", "flower-pw")).json()  # fmt: skip
    assert info["name"] == k.TASK_DRAIN and info["state"] == "SUCCESS"
    shown = json.dumps([tasks(), info, sweep])
    for secret in ("hunter2", "4321", SECRET_KEY, "sk-flower"):
        assert secret not in shown
