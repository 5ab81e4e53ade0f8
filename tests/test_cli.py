"""``clawctl`` run for real, as a subprocess, against an isolated $CLAW_HOME."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from claw_worker import constants
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

START = "<!-- CLAWFLEET MANAGED BLOCK START -->"
END = "<!-- CLAWFLEET MANAGED BLOCK END -->"
SECRET = "sk-test-secret-key-123456"


def clawctl(
    home: ClawHome, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return home.clawctl(*args, stdin=stdin)


def test_onboard_creates_config_and_workspace(claw_home: ClawHome) -> None:
    result = clawctl(claw_home, "onboard")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(claw_home.config_file.stat().st_mode) == 0o600
    json.loads(claw_home.config_file.read_text())
    ws = claw_home.workspace
    assert stat.S_IMODE(ws.stat().st_mode) == 0o700  # exec may leave set-id files there
    for name in ("AGENTS.md", "SOUL.md", "USER.md"):
        text = (ws / name).read_text()
        assert text.count(START) == 1 and text.count(END) == 1
    assert (ws / "HEARTBEAT.md").is_file() and (ws / "memory" / "MEMORY.md").is_file()
    assert (ws / "skills").is_dir()
    assert "clawctl login" in result.stdout and "clawctl gateway run" in result.stdout


def test_onboard_twice_rewrites_only_the_block(claw_home: ClawHome) -> None:
    assert clawctl(claw_home, "onboard").returncode == 0
    ws = claw_home.workspace
    agents = ws / "AGENTS.md"
    fresh = agents.read_text()
    block = fresh[fresh.index(START) : fresh.index(END) + len(END)]
    tampered = block.replace("# Agent rules", "# Agent rules (edited by hand)")
    agents.write_text("My header\n\n" + tampered + "\n\nMy footer rules\n")
    (ws / "SOUL.md").write_text("Only my own soul text\n")  # no block at all
    (ws / "HEARTBEAT.md").write_text("- check the deploy\n")
    config_before = claw_home.config_file.read_bytes()

    result = clawctl(claw_home, "onboard")
    assert result.returncode == 0, result.stderr
    assert agents.read_text() == "My header\n\n" + block + "\n\nMy footer rules\n"
    soul = (ws / "SOUL.md").read_text()
    assert soul.startswith("Only my own soul text\n") and soul.count(START) == 1
    assert (ws / "HEARTBEAT.md").read_text() == "- check the deploy\n"
    assert claw_home.config_file.read_bytes() == config_before
    assert "AGENTS.md" in result.stdout and "SOUL.md" in result.stdout

    # A third run has nothing left to change.
    snapshot = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    assert clawctl(claw_home, "onboard").returncode == 0
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == snapshot


def test_onboard_refuses_broken_markers_and_invalid_config(claw_home: ClawHome) -> None:
    assert clawctl(claw_home, "onboard").returncode == 0
    user = claw_home.workspace / "USER.md"
    user.write_text(f"{END}\nmine\n{START}\n")
    result = clawctl(claw_home, "onboard")
    assert result.returncode == 1
    assert "USER.md" in result.stderr and "markers" in result.stderr
    assert user.read_text() == f"{END}\nmine\n{START}\n"

    claw_home.write_config({"gateway": {"port": "x"}})
    before = claw_home.config_file.read_bytes()
    result = clawctl(claw_home, "onboard")
    assert result.returncode == 1
    assert "gateway.port" in result.stderr
    assert claw_home.config_file.read_bytes() == before


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("gateway.port", '"abc"', "gateway.port"),
        ("gateway.port", "70000", "gateway.port"),
        ("gateway.bogus", "1", "gateway.bogus"),
        ("gateway.port.deeper", "1", "gateway.port"),
        ("providers.proxy.api_base", "ftp://nope", "api_base"),
    ],
)
def test_config_set_refuses_bad_values(
    claw_home: ClawHome, path: str, value: str, named: str
) -> None:
    claw_home.write_config({"gateway": {"port": 9000}})
    before = claw_home.config_file.read_bytes()
    result = clawctl(claw_home, "config", "set", path, value)
    assert result.returncode != 0
    assert named in result.stderr
    assert claw_home.config_file.read_bytes() == before
    assert sorted(p.name for p in claw_home.path.iterdir()) == ["config.json"]


def test_config_set_writes_atomically_with_backup(claw_home: ClawHome) -> None:
    claw_home.write_config({"gateway": {"port": 9000}, "agents": {"defaults": {"model": "m1"}}})
    before = claw_home.config_file.read_bytes()
    result = clawctl(claw_home, "config", "set", "channels.telegram.enable", "true")
    assert result.returncode == 0, result.stderr
    assert "channels.telegram.enabled = true" in result.stdout
    assert clawctl(claw_home, "config", "set", "gateway.token", "12345").returncode == 0

    data = json.loads(claw_home.config_file.read_text())
    # Only what the user wrote, not every default.
    assert data == {
        "gateway": {"port": 9000, "token": "12345"},
        "agents": {"defaults": {"model": "m1"}},
        "channels": {"telegram": {"enabled": True}},
    }
    assert stat.S_IMODE(claw_home.config_file.stat().st_mode) == 0o600
    names = sorted(p.name for p in claw_home.path.iterdir())
    assert names == ["config.json", "config.json.bak"]  # no temp files left
    bak = json.loads((claw_home.path / "config.json.bak").read_text())
    assert bak["channels"]["telegram"]["enabled"] is True and "token" not in bak["gateway"]
    assert before != claw_home.config_file.read_bytes()


def test_config_set_can_fix_an_invalid_file(claw_home: ClawHome) -> None:
    claw_home.write_config({"gateway": {"port": "x"}})
    assert clawctl(claw_home, "config", "check").returncode == 1
    assert clawctl(claw_home, "config", "set", "gateway.port", "8000").returncode == 0
    assert clawctl(claw_home, "config", "check").returncode == 0


def test_config_flag_is_honoured(claw_home: ClawHome) -> None:
    alt = claw_home.path / "alt.json"
    alt.write_text('{"gateway": {"port": 1234}}')
    result = clawctl(claw_home, "--config", "alt.json", "config", "set", "gateway.port", "4321")
    assert result.returncode == 0, result.stderr
    assert json.loads(alt.read_text()) == {"gateway": {"port": 4321}}
    assert not claw_home.config_file.exists()
    got = clawctl(claw_home, "--config", str(alt), "config", "get", "gateway.port")
    assert got.stdout.strip() == "4321"
    status = clawctl(claw_home, "--config", str(alt), "status", "--json")
    assert json.loads(status.stdout)["config"]["path"] == str(alt)


def test_config_get_masks_secrets_and_names_unknown_paths(claw_home: ClawHome) -> None:
    claw_home.write_config({"providers": {"proxy": {"api_key": SECRET, "models": ["m"]}}})
    key = clawctl(claw_home, "config", "get", "providers.proxy.api_key")
    assert key.returncode == 0 and SECRET not in key.stdout and "****" in key.stdout
    section = clawctl(claw_home, "config", "get", "providers")
    assert SECRET not in section.stdout
    assert json.loads(section.stdout)["proxy"]["models"] == ["m"]
    bad = clawctl(claw_home, "config", "get", "gateway.prot")
    assert bad.returncode == 1 and "prot" in bad.stderr and "port" in bad.stderr


def test_config_check(claw_home: ClawHome) -> None:
    ok = clawctl(claw_home, "config", "check")
    assert ok.returncode == 0 and str(claw_home.config_file) in ok.stdout
    claw_home.config_file.write_text('{"gateway": {}}\n{"again": 1}\n')
    bad = clawctl(claw_home, "config", "check")
    assert bad.returncode == 1
    assert "extra content after the JSON object" in bad.stderr
    assert str(claw_home.config_file) in bad.stderr


def test_status_with_redis_down(claw_home: ClawHome) -> None:
    claw_home.write_config(
        {
            "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"},
            "providers": {"proxy": {"api_base": "http://127.0.0.1:1/v1", "api_key": SECRET}},
        }
    )
    result = clawctl(claw_home, "status")
    assert result.returncode == 1, result.stderr  # the report, and a failing exit status
    assert "unreachable" in result.stdout and SECRET not in result.stdout
    assert "workers    unknown" in result.stdout


def test_status_never_starts_the_embedded_redis(claw_home: ClawHome) -> None:
    report = json.loads(clawctl(claw_home, "status", "--json").stdout)
    assert report["redis"]["embedded"] is True and report["redis"]["reachable"] is False
    assert not (claw_home.path / "run" / "redis.sock").exists()


def test_status_with_redis_up(claw_home: ClawHome, redis_server: RedisServer) -> None:
    claw_home.write_config({"redis": {"url": redis_server.url}})
    conn = redis_server.client()
    conn.rpush("sessions", "a", "b")
    conn.zadd("claw:sessions:dirty", {"telegram:1": 1.0})
    result = clawctl(claw_home, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["redis"]["reachable"] is True
    assert report["queues"]["sessions"] == 2 and report["queues"]["tools"] == 0
    assert report["sessions_waiting"] == 1
    assert "workers" in report
    human = clawctl(claw_home, "status")
    assert "reachable" in human.stdout and "unreachable" not in human.stdout


def test_status_reports_an_invalid_config(claw_home: ClawHome) -> None:
    claw_home.write_config({"gateway": {"bogus": 1}})
    result = clawctl(claw_home, "status")
    assert result.returncode == 1
    assert "INVALID" in result.stdout and "gateway.bogus" in result.stdout


def test_agent_without_provider_says_how_to_configure(claw_home: ClawHome) -> None:
    result = clawctl(claw_home, "agent", "-m", "hello")
    assert result.returncode == 1
    assert "clawctl login" in result.stderr


def test_agent_one_turn_with_llm_and_embedded_redis(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    pytest.importorskip("claw_worker.agent")
    claw_home.write_config(
        {
            "providers": {
                "proxy": {"api_base": llm_server.base_url, "api_key": SECRET, "models": ["m"]}
            }
        }
    )
    llm_server.reply("hi from the model")
    result = clawctl(claw_home, "agent", "-m", "hello")
    assert result.returncode == 0, result.stderr
    assert "hi from the model" in result.stdout
    # The embedded Redis this command started is gone with it.
    from claw_worker.embedded_redis import is_alive

    assert not is_alive(f"unix://{claw_home.path / 'run' / 'redis.sock'}")
    log = (claw_home.path / "logs" / "agent.log").read_text()
    assert SECRET not in log


def test_agent_repl_until_exit(
    claw_home: ClawHome, llm_server: LLMServer, redis_server: RedisServer
) -> None:
    pytest.importorskip("claw_worker.agent")
    proxy = {"api_base": llm_server.base_url, "api_key": SECRET, "models": ["m"]}
    claw_home.write_config({"providers": {"proxy": proxy}, "redis": {"url": redis_server.url}})
    result = clawctl(
        claw_home, "agent", "--session", "cli:repl", stdin="first\n\nsecond\nexit\nnot sent\n"
    )
    assert result.returncode == 0, result.stderr
    assert "echo: first" in result.stdout and "echo: second" in result.stdout
    assert "not sent" not in json.dumps(llm_server.requests)
    assert redis_server.client().exists(constants.history_key("cli:repl"))


def test_agent_rejects_empty_message_and_bad_session(claw_home: ClawHome) -> None:
    assert "empty" in clawctl(claw_home, "agent", "-m", "  ").stderr
    result = clawctl(claw_home, "agent", "--session", "", "-m", "x")
    assert result.returncode != 0 and "--session" in result.stderr
    # The HTTP API's rule (contract.session_name_error): no whitespace, at most 256.
    for bad in ("has space", "tab\there", "x" * 257, "{brace}"):
        result = clawctl(claw_home, "agent", "--session", bad, "-m", "x")
        assert result.returncode != 0, bad
        assert "--session must be 1 to 256 characters without spaces" in result.stderr, bad
