"""``compose.yaml`` run as written, with ``docker compose up`` (or Debian's ``docker-compose``):
Redis with its health check, the ingress, a worker scaled to two, beat and Flower behind its
basic auth, each healthy; a message answered through them by the scripted LLM, which the
worker reaches on the host. Only the images are given (an override file: the image the
Dockerfile built, and a Redis image, a local stand-in where no registry is reachable);
compose's commands, environment, volumes, health checks and limits are the file's own.

It needs a container engine with compose, and skips, saying why, without one (CI).
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.containers import ROOT, Image, compose_command
from tests.fixtures.procs import wait_for
from tests.llm_server import LLMServer

REDIS_IMAGE_VAR = "CLAW_TEST_REDIS_IMAGE"
INGRESS_PORT, FLOWER_PORT = 18790, 5555  # compose.yaml publishes these on 127.0.0.1
TOKEN = "compose-up-token-123456"
API_KEY = "sk-compose-up-environment"
FLOWER_AUTH = ("ops", "flower-pass")
LLM_HOST = "llm.test"  # the worker's name for the host (extra_hosts: host-gateway)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def host_llm(image: Image) -> Iterator[LLMServer]:
    """The scripted LLM on the default bridge's gateway address, which ``host-gateway``
    names inside the containers."""
    gateway = image.run("network", "inspect", "bridge", "-f",
                        "{{(index .IPAM.Config 0).Gateway}}").stdout.strip()  # fmt: skip
    server = LLMServer(host=gateway).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(900)
def test_compose_yaml_runs_the_fleet(image: Image, host_llm: LLMServer, tmp_path: Path) -> None:
    compose = compose_command()
    redis_image = image.available(
        yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["redis"]["image"],
        REDIS_IMAGE_VAR,
    )
    taken = [port for port in (INGRESS_PORT, FLOWER_PORT) if port_in_use(port)]
    if taken:
        pytest.skip(f"compose.yaml publishes 127.0.0.1:{taken}, which something here holds")
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    api_base = f"http://{LLM_HOST}:{host_llm.port}/v1"
    config = {"providers": {"proxy": {"api_base": api_base, "models": ["test-model"]}}}
    (config_dir / "config.json").write_text(json.dumps(config))
    (config_dir / "config.json").chmod(0o644)
    override = tmp_path / "override.yaml"
    claw = {"image": image.tag}
    override.write_text(yaml.safe_dump({"services": {
        "redis": {"image": redis_image}, "ingress": claw, "beat": claw, "flower": claw,
        "worker": {**claw, "extra_hosts": [f"{LLM_HOST}:host-gateway"]},
    }}))  # fmt: skip
    project = f"clawup{uuid.uuid4().hex[:8]}"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "COMPOSE_PROJECT_NAME": project, "CLAW_CONFIG_DIR": str(config_dir),
           "CLAW_GATEWAY_TOKEN": TOKEN, "CLAW_API_KEY": API_KEY,
           "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}  # fmt: skip

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*compose, "-f", str(ROOT / "compose.yaml"), "-f", str(override),
                              *args], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
        assert not check or out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
        return out

    def health() -> dict[str, str]:
        """Service -> the health state of each of its containers, joined."""
        ids = run("ps", "-q").stdout.split()
        states: dict[str, list[str]] = {}
        for info in json.loads(image.run("inspect", *ids).stdout) if ids else []:
            service = info["Config"]["Labels"]["com.docker.compose.service"]
            states.setdefault(service, []).append(info["State"].get("Health", {}).get("Status"))
        return {service: ",".join(sorted(s)) for service, s in states.items()}

    try:
        run("up", "-d")
        every = {"redis", "ingress", "worker", "beat", "flower"}
        wait_for(lambda: health() == dict.fromkeys(every, "healthy"), timeout=240,
                 what="every service of compose.yaml healthy")  # fmt: skip

        base = f"http://127.0.0.1:{INGRESS_PORT}"
        assert httpx.post(f"{base}/api/message", json={"text": "x"}).status_code == 401
        resp = httpx.post(f"{base}/api/message", json={"text": "hello compose", "wait": True},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)  # fmt: skip
        assert resp.status_code == 200 and resp.json()["reply"] == "echo: hello compose", resp.text
        assert host_llm.request_headers[-1].get("authorization") == f"Bearer {API_KEY}"

        # Flower: its basic auth, and the workers as compose scales them.
        flower = f"http://127.0.0.1:{FLOWER_PORT}/api/workers?refresh=1"
        assert httpx.get(flower, timeout=30).status_code == 401
        run("up", "-d", "--scale", "worker=2")

        def two_workers() -> dict[str, Any] | None:
            found = httpx.get(flower, auth=FLOWER_AUTH, timeout=30).json()
            return found if len(found) == 2 else None

        workers = wait_for(two_workers, timeout=180, what="two workers in Flower")
        assert all(name.startswith("worker-") for name in workers), workers

        # clawctl in a container sees the fleet on one screen: the Sentinel's first round
        # (beat sends it at start) finds nothing wrong on fresh volumes.
        def sentinel() -> dict[str, Any] | None:
            out = run("exec", "-T", "ingress", "clawctl", "status", "--json", check=False)
            report = json.loads(out.stdout or "{}").get("sentinel", {}).get("report")
            return report if report and len(report.get("results", [])) > 0 else None

        report = wait_for(sentinel, timeout=180, what="the Sentinel's first report")
        assert report["failing"] == [], report
    finally:
        if any(state != "healthy" for state in health().values()):
            print(run("logs", "--tail", "40", check=False).stdout)
        run("down", "-v", "--remove-orphans", check=False)
