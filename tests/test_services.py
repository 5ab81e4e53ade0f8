"""``clawctl gateway`` as systemd services: the unit files it writes (parsed), the environment
file, and the ``systemctl`` calls it makes, recorded by a stand-in ``systemctl`` on PATH.
The tests run as root here, so the default is system units; ``CLAW_SYSTEMD_SCOPE=user``
gives user units. ``test_units_run_the_fleet`` runs the units' own commands for real."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port, wait_for
from tests.fixtures.systemd import SystemdStandIn, parse_unit

BIN = Path(sys.executable).absolute().parent
SERVICES = ["clawfleet-redis.service", "clawfleet-worker.service", "clawfleet-beat.service",
            "clawfleet-ingress.service"]  # fmt: skip
API_KEY = "sk-test-3f9a1c7e5b2d4f60"
TOKEN = "gw-token-8d2e6a0b4c1f9e7d"
NOT_AVAILABLE = "systemd is not available here: run the fleet with `clawctl gateway run`"


@pytest.fixture
def systemd(claw_home: ClawHome, tmp_path: Path) -> SystemdStandIn:
    claw_home.write_config(
        {"providers": {"proxy": {"api_key": API_KEY}}, "gateway": {"token": TOKEN}}
    )
    return SystemdStandIn(tmp_path / "sd", claw_home).install()


def units(sd: SystemdStandIn) -> dict[str, dict[str, dict[str, list[str]]]]:
    return {p.name: parse_unit(p.read_text()) for p in sorted(sd.units.iterdir())}


def service(sd: SystemdStandIn, name: str) -> dict[str, list[str]]:
    return parse_unit((sd.units / name).read_text())["Service"]


def test_system_units_are_written_enabled_and_hold_no_secret(systemd: SystemdStandIn) -> None:
    home = systemd.home.path
    result = systemd.clawctl("gateway")
    assert result.returncode == 0, result.stderr
    assert "run as root, which is discouraged" in result.stdout

    written = units(systemd)
    assert set(written) == {*SERVICES, "clawfleet.target"}
    assert written["clawfleet.target"]["Unit"]["Wants"] == [" ".join(SERVICES)]
    assert written["clawfleet.target"]["Install"]["WantedBy"] == ["multi-user.target"]
    worker = written["clawfleet-worker.service"]
    assert worker["Service"]["ExecStart"] == [f"{BIN}/celery -A claw_worker worker"]
    assert written["clawfleet-beat.service"]["Service"]["ExecStart"] == [
        f"{BIN}/celery -A claw_worker beat"
    ]
    assert written["clawfleet-ingress.service"]["Service"]["ExecStart"] == [f"{BIN}/claw-ingress"]
    assert worker["Service"]["KillMode"] == ["mixed"]
    assert worker["Service"]["TimeoutStopSec"] == ["60"]
    assert "clawfleet-redis.service" in worker["Unit"]["After"][0]
    assert "network-online.target" in worker["Unit"]["Wants"][0]
    # The ingress stops first: it is ordered after the worker.
    assert "clawfleet-worker.service" in written["clawfleet-ingress.service"]["Unit"]["After"][0]
    for name in SERVICES:
        svc = written[name]["Service"]
        assert svc["Restart"] == ["on-failure"] and svc["RestartSec"] == ["5"]
        assert svc["EnvironmentFile"] == [f"-{home}/clawfleet.env"]
        env = shlex.split(svc["Environment"][0])
        assert f"CLAW_HOME={home}" in env and f"CLAW_CONFIG={home}/config.json" in env
        assert svc["WorkingDirectory"] == [str(home)]
        # System units: the invoking user (root here, no SUDO_USER) and hardening.
        assert svc["User"] == ["root"] and svc["Group"] == ["root"]
        assert svc["NoNewPrivileges"] == ["yes"] and svc["ProtectSystem"] == ["full"]
        assert f"-{home}" in svc["ReadWritePaths"]
        # CLAW_HOME is under /tmp (pytest's): a private /tmp would hide it.
        assert "PrivateTmp" not in svc
        assert svc["UnsetEnvironment"] == ["FLOWER_BASIC_AUTH"]
        assert written[name]["Install"]["WantedBy"] == ["clawfleet.target"]
        assert written[name]["Unit"]["PartOf"] == ["clawfleet.target"]

    for path in systemd.units.iterdir():
        text = path.read_text()
        assert API_KEY not in text and TOKEN not in text and "sk-" not in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    env_file = home / "clawfleet.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env_text = env_file.read_text()
    for name in ("#CLAW_API_KEY=", "#CLAW_GATEWAY_TOKEN=", "#FLOWER_BASIC_AUTH="):
        assert name in env_text
    assert API_KEY not in env_text

    assert systemd.calls() == [
        ["daemon-reload"],
        ["enable", "--now", "clawfleet.target", *SERVICES],
    ]


def test_user_units(systemd: SystemdStandIn) -> None:
    result = systemd.clawctl("gateway", env=systemd.env(CLAW_SYSTEMD_SCOPE="user"))
    assert result.returncode == 0, result.stderr
    # Named even where $USER is unset (the stand-in's environment has none).
    assert f"loginctl enable-linger {pwd.getpwuid(os.getuid()).pw_name}`" in result.stdout
    written = units(systemd)
    assert written["clawfleet.target"]["Install"]["WantedBy"] == ["default.target"]
    for name in SERVICES:
        svc = written[name]["Service"]
        assert "User" not in svc and "ProtectSystem" not in svc and "NoNewPrivileges" not in svc
        assert "network-online.target" not in str(written[name]["Unit"])
    calls = systemd.calls()
    assert calls == [
        ["--user", "daemon-reload"],
        ["--user", "enable", "--now", "clawfleet.target", *SERVICES],
    ]


def test_units_pass_systemd_analyze_verify(systemd: SystemdStandIn) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # A CLAW_HOME with a space and a '%' (a specifier character) must survive quoting.
    odd_home = systemd.home.path / "my claw%home"
    odd_home.mkdir()
    env = systemd.env(CLAW_HOME=str(odd_home))
    assert systemd.clawctl("onboard", env=env).returncode == 0
    assert systemd.clawctl("gateway", "--flower", "--workers", "2", env=env).returncode == 1
    (odd_home / "clawfleet.env").write_text("FLOWER_BASIC_AUTH=admin:pw\n")
    result = systemd.clawctl("gateway", "--flower", "--workers", "2", env=env)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in systemd.units.iterdir())
    assert "clawfleet-worker@.service" in names and "clawfleet-flower.service" in names
    verify = subprocess.run(
        [analyze, "verify", "--man=no", *(str(systemd.units / n) for n in names)],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{systemd.units}:"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    ours = [line for line in verify.stderr.splitlines() if "clawfleet" in line]
    assert verify.returncode == 0 and not ours, verify.stderr
    env_line = service(systemd, "clawfleet-beat.service")["Environment"][0]
    assert f'"CLAW_HOME={odd_home}"'.replace("%", "%%") in env_line


def test_rerun_is_idempotent_and_follows_changes(systemd: SystemdStandIn) -> None:
    assert systemd.clawctl("gateway").returncode == 0
    before = {p.name: p.stat().st_ino for p in systemd.units.iterdir()}
    systemd.forget_calls()

    again = systemd.clawctl("gateway")
    assert again.returncode == 0 and "unchanged 5 unit files" in again.stdout
    assert {p.name: p.stat().st_ino for p in systemd.units.iterdir()} == before
    assert systemd.calls() == [["enable", "--now", "clawfleet.target", *SERVICES]]

    # Flower never runs without a password: refused, nothing changes.
    systemd.forget_calls()
    refused = systemd.clawctl("gateway", "--flower")
    assert refused.returncode == 1 and "FLOWER_BASIC_AUTH=user:password" in refused.stderr
    assert not (systemd.units / "clawfleet-flower.service").exists() and systemd.calls() == []

    env_file = systemd.home.path / "clawfleet.env"
    env_file.write_text(env_file.read_text() + "FLOWER_BASIC_AUTH=admin:s3cret-pw\n")
    added = systemd.clawctl("gateway", "--flower", "--flower-port", "5601")
    assert added.returncode == 0, added.stderr
    flower = service(systemd, "clawfleet-flower.service")
    assert flower["ExecStart"] == [
        f"{BIN}/celery -A claw_worker flower --address=127.0.0.1 --port=5601"
    ]
    assert flower["ExecStartPre"] == ["/bin/sh -c 'test -n \"$${FLOWER_BASIC_AUTH}\"'"]
    assert "UnsetEnvironment" not in flower  # the one unit that gets the password
    assert "s3cret-pw" not in (systemd.units / "clawfleet-flower.service").read_text()
    assert systemd.calls() == [
        ["daemon-reload"],
        ["enable", "--now", "clawfleet.target", *SERVICES, "clawfleet-flower.service"],
    ]

    # Dropped again: stopped, disabled, removed; the target no longer wants it.
    systemd.forget_calls()
    dropped = systemd.clawctl("gateway")
    assert dropped.returncode == 0, dropped.stderr
    assert not (systemd.units / "clawfleet-flower.service").exists()
    assert systemd.calls() == [
        ["disable", "--now", "clawfleet-flower.service"],
        ["daemon-reload"],
        ["enable", "--now", "clawfleet.target", *SERVICES],
    ]

    # A changed unit of a running service is restarted (here: three workers, a template).
    systemd.forget_calls()
    assert systemd.clawctl("gateway", "--workers", "3").returncode == 0
    workers = [f"clawfleet-worker@{i}.service" for i in (1, 2, 3)]
    template = service(systemd, "clawfleet-worker@.service")
    assert "CLAW_NODE_NAME=worker%i@%H" in template["Environment"][0]
    assert not (systemd.units / "clawfleet-worker.service").exists()
    calls = systemd.calls()
    assert calls[0] == ["disable", "--now", "clawfleet-worker.service"]
    assert calls[2] == ["enable", "--now", "clawfleet.target", "clawfleet-redis.service",
                        *workers, "clawfleet-beat.service", "clawfleet-ingress.service"]  # fmt: skip
    assert calls[3][0] == "try-restart" and "clawfleet-ingress.service" in calls[3]


def test_configured_redis_and_sudo_user(systemd: SystemdStandIn) -> None:
    config = systemd.home.config_file
    config.write_text(config.read_text().replace('"gateway"', '"redis": {"url": '
                      '"redis://:pw-in-url@127.0.0.1:6399/0"}, "gateway"'))  # fmt: skip
    result = systemd.clawctl("gateway", env=systemd.env(SUDO_USER="nobody"))
    assert result.returncode == 0, result.stderr
    assert "discouraged" not in result.stdout
    names = {p.name for p in systemd.units.iterdir()}
    assert "clawfleet-redis.service" not in names
    worker = parse_unit((systemd.units / "clawfleet-worker.service").read_text())
    assert worker["Service"]["User"] == ["nobody"]
    assert "redis-server.service" in worker["Unit"]["After"][0]  # ordering only
    assert "redis-server.service" not in worker["Unit"]["Wants"][0]
    for path in systemd.units.iterdir():
        assert "pw-in-url" not in path.read_text()
    # Made for the user the services run as.
    assert (systemd.home.path / "clawfleet.env").stat().st_uid == 65534


def test_start_stop_restart_status(systemd: SystemdStandIn) -> None:
    refused = systemd.clawctl("gateway", "start")
    assert refused.returncode == 1 and "install them with `clawctl gateway`" in refused.stderr
    assert systemd.calls() == []

    assert systemd.clawctl("gateway").returncode == 0
    systemd.forget_calls()
    for verb in ("start", "stop", "restart"):
        result = systemd.clawctl("gateway", verb)
        assert result.returncode == 0, result.stderr
    only = systemd.clawctl("gateway", "restart", "--only", "worker")
    assert only.returncode == 0
    assert systemd.clawctl("gateway", "stop", "--only", "flower").returncode == 1
    assert systemd.calls() == [
        ["start", *SERVICES], ["stop", *SERVICES], ["restart", *SERVICES],
        ["restart", "clawfleet-worker.service"],
    ]  # fmt: skip

    status = systemd.clawctl("gateway", "status")
    assert status.returncode == 0, status.stderr
    rows = status.stdout.splitlines()[1:]
    assert [row.split()[:3] for row in rows] == [[name, "active", "running"] for name in SERVICES]

    systemd.set_state(units={"clawfleet-worker.service": {"ActiveState": "failed",
                                                          "SubState": "failed", "MainPID": "0"}})  # fmt: skip
    failed = systemd.clawctl("gateway", "status")
    assert failed.returncode == 1
    assert "clawfleet-worker.service   failed" in failed.stdout
    assert "not running: clawfleet-worker.service" in failed.stderr
    assert "journalctl -u clawfleet-worker.service" in failed.stderr


def test_systemctl_failure_is_one_line(systemd: SystemdStandIn) -> None:
    systemd.set_state(fail={"enable": "Failed to enable unit: Access denied"})
    result = systemd.clawctl("gateway")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: `systemctl enable --now clawfleet.target "
        + " ".join(SERVICES)
        + "` failed: Failed to enable unit: Access denied"
    ]


def test_without_systemd_every_command_says_so(systemd: SystemdStandIn) -> None:
    no_systemctl = systemd.env(PATH=str(systemd.root / "empty"))
    not_booted = systemd.env(CLAW_SYSTEMD_PROBE=str(systemd.root / "missing"))
    for env in (no_systemctl, not_booted):
        for args in (["gateway"], ["gateway", "install"], ["gateway", "start"],
                     ["gateway", "stop"], ["gateway", "restart"], ["gateway", "status"]):  # fmt: skip
            result = systemd.clawctl(*args, env=env)
            assert result.returncode == 1, args
            assert NOT_AVAILABLE in result.stderr and "compose.yaml" in result.stderr
    assert systemd.calls() == [] and not systemd.units.exists()


def test_bad_input_is_refused_cleanly(systemd: SystemdStandIn) -> None:
    bad_scope = systemd.clawctl("gateway", env=systemd.env(CLAW_SYSTEMD_SCOPE="both"))
    assert bad_scope.returncode == 1 and "CLAW_SYSTEMD_SCOPE must be" in bad_scope.stderr
    misplaced = systemd.clawctl("gateway", "--flower", "status")
    assert misplaced.returncode == 1 and "go with `clawctl gateway` alone" in misplaced.stderr
    workers = systemd.clawctl("gateway", "--workers", "0")
    assert workers.returncode == 2 and "--workers" in workers.stderr
    newline_home = systemd.home.path / "a\nb"
    newline_home.mkdir()
    (newline_home / "config.json").write_text("{}")
    result = systemd.clawctl("gateway", env=systemd.env(CLAW_HOME=str(newline_home)))
    assert result.returncode == 1 and "a unit file cannot hold" in result.stderr
    missing = systemd.clawctl("gateway", env=systemd.env(CLAW_HOME=str(systemd.root / "none")))
    assert missing.returncode == 1 and "run `clawctl onboard` first" in missing.stderr
    assert systemd.calls() == [] and not systemd.units.exists()


def test_units_run_the_fleet(systemd: SystemdStandIn, llm_server) -> None:
    """What systemd would run: each unit's ExecStart (and the Redis unit's ExecStartPost)
    with the unit's Environment= and EnvironmentFile=, in the target's order."""
    port = free_port()
    systemd.home.write_config({
        "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["m1"]}},
        "gateway": {"port": port}, "worker": {"concurrency": 4},
    })  # fmt: skip
    env = systemd.env(CLAW_SYSTEMD_SCOPE="user")
    assert systemd.clawctl("gateway", env=env).returncode == 0
    (systemd.home.path / "clawfleet.env").write_text("CLAW_API_KEY=from-env-file\n")
    host = socket.gethostname()
    try:
        systemd.start_units(SERVICES)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, timeout=60,
                 what="the ingress unit's /health")  # fmt: skip
        resp = httpx.post(f"{base}/api/message", json={"text": "hi", "wait": True}, timeout=90)
        assert resp.status_code == 200 and resp.json()["reply"] == "echo: hi", resp.text
        assert llm_server.requests, "the worker unit reached the LLM"
        # The log files are named after CLAW_NODE_NAME, as with `clawctl gateway run`.
        logs = systemd.home.path / "logs"
        assert (logs / f"worker@{host}.log").exists() and (logs / f"ingress@{host}.log").exists()
    finally:
        systemd.stop_units()
