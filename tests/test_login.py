"""``clawctl login`` against the scripted server (real HTTP, real subprocess), and the
breaker lines of ``clawctl status``."""

from __future__ import annotations

import json
import subprocess
import sys

from claw_worker.providers.breaker import Breakers
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

SECRET = "sk-login-secret-987654321"


def clawctl(home: ClawHome, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "claw_worker.cli", *args],
        stdin=subprocess.DEVNULL,  # not a terminal: login must not prompt
        env=home.env(),
        cwd=home.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr  # the key is never printed
    return result


def saved(home: ClawHome) -> dict:
    return json.loads(home.config_file.read_text())["providers"]["proxy"]


def test_login_checks_the_model_list_then_saves(claw_home: ClawHome, llm_server: LLMServer) -> None:
    claw_home.write_config({"gateway": {"port": 18800}})
    result = clawctl(
        claw_home, "login", "--api-base", llm_server.base_url, "--api-key", SECRET,
        "--model", "test-model,test-model-mini", "--model", "other", "--protocol", "responses",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "check ok" in result.stdout and "not listed by the endpoint: other" in result.stderr
    assert saved(claw_home) == {
        "api_base": llm_server.base_url,
        "api_key": SECRET,
        "models": ["test-model", "test-model-mini", "other"],
        "protocol": "responses",
    }
    assert json.loads(claw_home.config_file.read_text())["gateway"] == {"port": 18800}
    assert llm_server.request_headers == []  # only GET /models: no chat request recorded


def test_login_without_model_list_uses_a_one_token_chat(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    llm_server.models_error = llm.error(404, {"error": {"message": "no such route"}})
    result = clawctl(
        claw_home, "login", "--api-base", llm_server.base_url, "--api-key", SECRET,
        "--model", "m1", "--protocol", "anthropic",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert llm_server.request_paths == ["/v1/messages"]
    assert llm_server.requests[0]["max_tokens"] == 1
    assert llm_server.request_headers[0]["x-api-key"] == SECRET
    assert saved(claw_home)["protocol"] == "anthropic"


def test_login_refuses_when_the_check_fails(claw_home: ClawHome, llm_server: LLMServer) -> None:
    llm_server.models_error = llm.error(401, {"error": {"message": f"bad key {SECRET}"}})
    args = ["--api-key", SECRET, "--model", "m1"]
    result = clawctl(claw_home, "login", "--api-base", llm_server.base_url, *args)
    assert result.returncode == 1
    assert "endpoint check failed, nothing saved" in result.stderr and "HTTP 401" in result.stderr
    assert not claw_home.config_file.exists()

    dead = f"http://127.0.0.1:{free_port()}/v1"
    result = clawctl(claw_home, "login", "--api-base", dead, *args)
    assert result.returncode == 1 and "cannot reach" in result.stderr
    assert not claw_home.config_file.exists()

    result = clawctl(claw_home, "login", "--api-base", dead, *args, "--no-check")
    assert result.returncode == 0, result.stderr
    assert saved(claw_home)["api_base"] == dead


def test_login_without_a_terminal_needs_the_options(claw_home: ClawHome) -> None:
    result = clawctl(claw_home, "login", "--api-key", SECRET, "--model", "m")
    assert result.returncode != 0 and "--api-base is required" in result.stderr
    result = clawctl(claw_home, "login", "--api-base", "http://127.0.0.1:9/v1", "--model", "m")
    assert result.returncode != 0 and "--api-key is required" in result.stderr
    result = clawctl(claw_home, "login", "--api-base", "ftp://x", "--api-key", "k", "--model", "m")
    assert result.returncode != 0 and "http://" in result.stderr
    assert not claw_home.config_file.exists()


def test_status_shows_breakers(claw_home: ClawHome, redis_server: RedisServer) -> None:
    proxies = {"b": {"api_base": "http://127.0.0.1:9/v1", "models": ["b1"]}}
    claw_home.write_config(
        {
            "providers": {
                "proxy": {"api_base": "http://127.0.0.1:8/v1", "models": ["m"]},
                "proxies": proxies,
                "proxy_fallbacks": ["b"],
            },
            "redis": {"url": redis_server.url},
        }
    )
    breakers = Breakers(redis_server.client(), threshold=2, cooldown_sec=600)
    assert not breakers.record_failure("proxy")
    assert breakers.record_failure("proxy")
    breakers.record_failure("b")
    result = clawctl(claw_home, "status")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("breakers"))
    assert "proxy=open until " in line and "b=closed (1 recent failures)" in line
    report = json.loads(clawctl(claw_home, "status", "--json").stdout)
    assert report["breakers"]["proxy"]["state"] == "open"
    assert report["breakers"]["b"] == {"state": "closed", "failures": 1, "open_until": None}
