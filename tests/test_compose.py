"""compose.yaml describes the fleet (Docker does not run here, so its shape is checked)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_services_and_commands() -> None:
    services = load()["services"]
    assert set(services) == {"redis", "ingress", "worker", "beat", "flower"}
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert services["ingress"]["command"] == ["claw-ingress"]
    # The plain commands: what they do without flags is proven in test_celery_commands.py
    # and test_multihost.py, which run these very lines.
    for name in ("worker", "beat", "flower"):
        assert services[name]["command"] == ["celery", "-A", "claw_worker", name]
    assert "ports" not in services["worker"] and "container_name" not in services["worker"], (
        "the worker must be scalable with --scale worker=N"
    )
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_shared_workspace_config_and_environment() -> None:
    services = load()["services"]
    for name in ("ingress", "worker", "beat", "flower"):
        svc = services[name]
        volumes = svc["volumes"]
        assert any(v.startswith("workspace:") for v in volumes), name
        assert any(v.endswith("/etc/claw/config.json:ro") for v in volumes), name
        env = svc["environment"]
        assert env["CLAW_CONFIG"] == "/etc/claw/config.json"
        assert env["CLAW_REDIS_URL"].startswith("redis://redis:")
    assert {"workspace", "redis-data"} <= set(load()["volumes"])


def test_dockerfile_installs_the_three_packages() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for package in ("claw_worker", "claw_ingress", "beat_schedules"):
        assert f"COPY {package}" in text
