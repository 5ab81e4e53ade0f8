"""``python -m claw_worker.health worker|beat``: the cheap health check compose and the
Kubernetes probes run in a worker or beat container, against real workers and beats started
with compose's commands and a real redis-server; and every health check of compose.yaml and
probe of deploy/kubernetes/ run against the real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from claw_worker.control import live_processes
from tests.fixtures.hosts import ROOT, Host, compose
from tests.fixtures.procs import free_port, wait_for

HOSTNAME = socket.gethostname()
ROLES = ("ingress", "worker", "beat", "flower")


def config() -> dict[str, Any]:
    return {
        "providers": {"proxy": {"api_base": "http://127.0.0.1:9/v1", "models": ["m"]}},
        "worker": {"pool": "threads", "concurrency": 4},
        "beat": {"lock_timeout_sec": 6},
    }


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claw_worker.health", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def host_health(host: Host, role: str) -> subprocess.CompletedProcess[str]:
    return health(host.env(role), role)


def test_the_worker_check_follows_the_worker_process(make_host) -> None:
    host: Host = make_host("a")
    host.write_config(config())
    host.home.mkdir(parents=True)

    before = host_health(host, "worker")
    assert before.returncode == 1, before
    assert before.stderr.strip().startswith(f"unhealthy: no worker process on {HOSTNAME}")
    assert "Traceback" not in before.stderr

    host.start("worker")
    name = host.wait_worker_ready()
    ok = wait_for(
        lambda: (result := host_health(host, "worker")).returncode == 0 and result,
        timeout=30,
        what="the worker's health check to pass",
    )
    assert ok.stdout.strip() == f"ok: worker {name} on {HOSTNAME}"
    assert host_health(host, "beat").returncode == 1  # a worker is not a beat

    # kill -9: its heartbeat is still fresh in Redis, but its pid is gone, so the check
    # fails at once rather than PROC_TTL_SEC later.
    host.kill("worker")
    after = host_health(host, "worker")
    assert after.returncode == 1, after
    assert "no worker process" in after.stderr


def test_an_active_and_a_standby_beat_are_both_healthy(make_host, redis_server) -> None:
    hosts: list[Host] = []
    for name in ("a", "b"):
        host = make_host(name)
        host.write_config(config())
        host.start("beat")
        hosts.append(host)

    def beats() -> int:
        return sum(p["role"] == "beat" for p in live_processes(redis_server.client()))

    wait_for(lambda: beats() == 2, timeout=60, what="both beats in the process registry")
    wait_for(lambda: any(h.beat_is_active() for h in hosts), timeout=60, what="an active beat")
    ok = host_health(hosts[0], "beat")
    assert ok.returncode == 0, ok
    assert ok.stdout.count("beat-") == 2, ok.stdout  # the standby counts: it is running

    active = next(h for h in hosts if h.beat_is_active())
    standby = next(h for h in hosts if h is not active)
    active.kill("beat")
    assert host_health(standby, "beat").returncode == 0  # the standby alone still passes
    standby.kill("beat")
    gone = host_health(standby, "beat")
    assert gone.returncode == 1 and "no beat process" in gone.stderr


def plain_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAW_", "OPENAI_"))}
    env.update(HOME=str(tmp_path), CLAW_HOME=str(tmp_path / ".claw"), **extra)
    return env


def test_unreachable_redis_bad_arguments_and_config_get_one_line(tmp_path: Path) -> None:
    password = "pw-must-not-be-printed-42"
    port = free_port()
    down = health(
        plain_env(tmp_path, CLAW_REDIS_URL=f"redis://:{password}@127.0.0.1:{port}/0"), "worker"
    )
    assert down.returncode == 1
    assert down.stderr.startswith(f"unhealthy: Redis at 127.0.0.1:{port} did not answer")
    assert password not in down.stdout + down.stderr
    assert len(down.stderr.strip().splitlines()) == 1

    not_a_url = health(plain_env(tmp_path, CLAW_REDIS_URL=f"http://{password}@x/"), "beat")
    assert not_a_url.returncode == 1 and "cannot be used" in not_a_url.stderr
    assert password not in not_a_url.stderr

    usage = health(plain_env(tmp_path), "ingress")
    assert usage.returncode == 2 and "invalid choice: 'ingress'" in usage.stderr

    broken = tmp_path / "config.json"
    broken.write_text(json.dumps({"gateway": {"port": "not a port"}}))
    bad = health(plain_env(tmp_path, CLAW_CONFIG=str(broken)), "worker")
    assert bad.returncode == 2, bad
    assert bad.stderr.startswith("health: ") and "gateway.port" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def manifest_container(role: str) -> dict[str, Any]:
    """The container of deploy/kubernetes/<role>.yaml's Deployment."""
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / f"{role}.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def probe_ok(host: Host, role: str, probe: dict[str, Any], port: int | None) -> bool:
    """A manifest's probe run against ``host``'s process: exec (``python`` is this venv's),
    or httpGet on the test's port for the container's named port."""
    if "exec" in probe:
        command = [sys.executable if a == "python" else a for a in probe["exec"]["command"]]
        return subprocess.run(command, env=host.env(role), capture_output=True,
                              timeout=30).returncode == 0  # fmt: skip
    path = probe["httpGet"]["path"]
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200


def compose_check_ok(host: Host, role: str, port: int | None) -> bool:
    """compose's health check for ``role``, with this venv's python and the test's port."""
    kind, *command = compose()["services"][role]["healthcheck"]["test"]
    assert kind == "CMD"
    command = [sys.executable if a == "python" else a for a in command]
    published = {"ingress": "18790", "flower": "5555"}.get(role)
    if published:
        command = [a.replace(f":{published}/", f":{port}/") for a in command]
    return subprocess.run(command, env=host.env(role), capture_output=True,
                          timeout=30).returncode == 0  # fmt: skip


def test_compose_health_checks_and_kubernetes_probes_pass_on_real_processes(make_host) -> None:
    ports: dict[str, int | None] = {"ingress": free_port(), "flower": free_port()}
    host: Host = make_host("a")
    host.write_config({**config(), "gateway": {"port": ports["ingress"]}})
    host.start("ingress")
    host.start("worker")
    host.start("beat")
    host.start("flower", FLOWER_PORT=str(ports["flower"]), FLOWER_ADDRESS="127.0.0.1",
               FLOWER_BASIC_AUTH="admin:flower-pw")  # fmt: skip
    host.wait_worker_ready()
    for role in ROLES:
        container, port = manifest_container(role), ports.get(role)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in container:
                wait_for(lambda c=container, k=kind, r=role, p=port: probe_ok(host, r, c[k], p),
                         timeout=60, what=f"{role}'s {kind}")  # fmt: skip
        wait_for(lambda r=role, p=port: compose_check_ok(host, r, p), timeout=60,
                 what=f"compose's health check of {role}")  # fmt: skip
    host.kill("worker")
    assert not probe_ok(host, "worker", manifest_container("worker")["livenessProbe"], None)
    assert not compose_check_ok(host, "worker", None)
