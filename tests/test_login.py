"""``clawctl login`` against the scripted server (real HTTP, real subprocess), with options
and answering its prompts on a real pseudo-terminal, and the breaker lines of ``clawctl status``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from claw_worker.config.schema import Config
from claw_worker.providers.breaker import Breakers
from claw_worker.providers.registry import proxy_breakers
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port
from tests.fixtures.pty_session import CTRL_C, CTRL_D, PtySession
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

SECRET = "sk-login-secret-987654321"
# The installed console script when there is one (as a user runs it), else the module.
CLAWCTL = Path(sys.executable).with_name("clawctl")
CLAWCTL_ARGV = [str(CLAWCTL)] if CLAWCTL.exists() else [sys.executable, "-m", "claw_worker.cli"]
BASE_PROMPT = "API base URL (e.g. https://llm.example.com/v1): "
KEY_PROMPT = "API key: "
MODEL_PROMPT = "Model name(s), comma-separated: "
CANCELLED = "Error: login cancelled; nothing was saved\n"
KEEP_KEY_PROMPT = "API key (Enter keeps the saved one): "  # the saved key is never shown


def with_default(prompt: str, default: str) -> str:
    """A prompt offering the saved value, which Enter keeps."""
    return f"{prompt.removesuffix(': ')} [{default}]: "


def clawctl(home: ClawHome, *args: str) -> subprocess.CompletedProcess[str]:
    result = home.clawctl(*args)  # stdin is not a terminal: login must not prompt
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
    result = clawctl(claw_home, "login", "--api-base", "http://127.0.0.1:9/v1", "--api-key", "k",
                     "--model", "", "--no-check")  # fmt: skip
    assert result.returncode != 0 and "--model: the model name is empty" in result.stderr


def test_login_with_an_empty_key_says_there_is_none(claw_home: ClawHome) -> None:
    """An endpoint without a key (a local server) is fine, but not "from the environment"
    when the environment has none."""
    result = claw_home.clawctl(
        "login",
        "--api-base",
        "http://127.0.0.1:9/v1",
        "--api-key",
        "",
        "--model",
        "m",
        "--no-check",
    )  # the environment has no key
    assert result.returncode == 0, result.stderr
    assert "key (none: the endpoint must take requests without one)" in result.stdout
    assert "from the environment" not in result.stdout


# -- interactive: the prompts answered on a pseudo-terminal ------------------------------------
def login_on_terminal(home: ClawHome) -> PtySession:
    return PtySession([*CLAWCTL_ARGV, "login"], env=home.env(), cwd=home.path, timeout=30)


def answer(session: PtySession, prompt: str, text: str) -> str:
    """Wait for ``prompt``, type ``text`` and Enter; the output up to the prompt."""
    before = session.expect(prompt)
    session.sendline(text)
    return before


def finish(session: PtySession) -> tuple[int, str]:
    status = session.wait()
    transcript = session.transcript
    assert "Traceback" not in transcript, transcript
    assert SECRET not in transcript, transcript  # neither echoed as typed nor printed back
    return status, transcript


def test_login_asks_on_a_terminal_hiding_the_key(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    claw_home.write_config({"gateway": {"port": 18800}})
    with login_on_terminal(claw_home) as session:
        answer(session, BASE_PROMPT, llm_server.base_url)
        answer(session, KEY_PROMPT, SECRET)
        # Nothing at all echoed for the key, not even stars: only the Enter's new line.
        assert answer(session, MODEL_PROMPT, "test-model, test-model-mini") == "\n" + MODEL_PROMPT
        status, transcript = finish(session)
    assert status == 0, transcript
    assert f"{BASE_PROMPT}{llm_server.base_url}\n" in transcript  # visible answers echo
    assert "check ok:" in transcript and "listed 2 models" in transcript
    assert "saved " in transcript and "key ****" in transcript
    assert saved(claw_home) == {
        "api_base": llm_server.base_url,
        "api_key": SECRET,
        "models": ["test-model", "test-model-mini"],
        "protocol": "chat_completions",
    }
    assert json.loads(claw_home.config_file.read_text())["gateway"] == {"port": 18800}


def test_login_asks_again_after_a_wrong_answer(claw_home: ClawHome, llm_server: LLMServer) -> None:
    # No model list: the one-token chat shows which key reached the endpoint.
    llm_server.models_error = llm.error(404, {"error": {"message": "no such route"}})
    with login_on_terminal(claw_home) as session:
        answer(session, BASE_PROMPT, "llm.example.com/v1")
        session.expect("Error: the API base must start with http:// or https://")
        answer(session, BASE_PROMPT, llm_server.base_url)
        answer(session, KEY_PROMPT, "   ")
        session.expect("Error: an answer is needed; try again (Ctrl-C to cancel).")
        answer(session, KEY_PROMPT, SECRET)
        answer(session, MODEL_PROMPT, " , ")
        session.expect("Error: at least one model name is needed")
        answer(session, MODEL_PROMPT, "m1")
        status, transcript = finish(session)
    assert status == 0, transcript
    assert transcript.count(BASE_PROMPT) == 2 and transcript.count(MODEL_PROMPT) == 2
    assert "a test chat request to m1 succeeded" in transcript
    assert llm_server.request_headers[0]["authorization"] == f"Bearer {SECRET}"
    assert saved(claw_home) == {
        "api_base": llm_server.base_url,
        "api_key": SECRET,
        "models": ["m1"],
        "protocol": "chat_completions",
    }


def test_login_on_a_terminal_saves_nothing_when_the_check_fails(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    old = {"api_base": "http://127.0.0.1:9/v1", "api_key": "sk-old", "models": ["old"]}
    before = claw_home.write_config({"providers": {"proxy": old}}).read_bytes()
    llm_server.models_error = llm.error(401, {"error": {"message": f"bad key {SECRET}"}})
    with login_on_terminal(claw_home) as session:
        answer(session, with_default(BASE_PROMPT, old["api_base"]), llm_server.base_url)
        answer(session, KEEP_KEY_PROMPT, SECRET)
        answer(session, with_default(MODEL_PROMPT, "old"), "test-model")
        status, transcript = finish(session)  # the key the endpoint sent back is masked
    assert status == 1, transcript
    assert "Error: endpoint check failed, nothing saved" in transcript, transcript
    assert "HTTP 401" in transcript and "bad key ****" in transcript
    assert claw_home.config_file.read_bytes() == before
    assert sorted(p.name for p in claw_home.path.iterdir()) == ["config.json"]  # no .bak


def test_login_again_on_a_terminal_keeps_what_enter_accepts(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    proxy = {"api_base": llm_server.base_url, "api_key": SECRET, "models": ["test-model"]}
    claw_home.write_config({"providers": {"proxy": proxy}})
    new_key = "sk-rotated-123456789"
    with login_on_terminal(claw_home) as session:
        answer(session, with_default(BASE_PROMPT, llm_server.base_url), "")
        answer(session, KEEP_KEY_PROMPT, new_key)  # only the key changes
        answer(session, with_default(MODEL_PROMPT, "test-model"), "")
        status, transcript = finish(session)
    assert status == 0, transcript
    assert new_key not in transcript
    assert saved(claw_home) == {**proxy, "api_key": new_key, "protocol": "chat_completions"}

    with login_on_terminal(claw_home) as session:  # Enter everywhere: nothing changes
        for prompt in (with_default(BASE_PROMPT, llm_server.base_url), KEEP_KEY_PROMPT,
                       with_default(MODEL_PROMPT, "test-model")):  # fmt: skip
            answer(session, prompt, "")
        status, transcript = finish(session)
    assert status == 0, transcript
    assert saved(claw_home)["api_key"] == new_key


@pytest.mark.parametrize(
    ("answered", "key"),
    [(0, CTRL_C), (0, CTRL_D), (1, CTRL_C), (1, CTRL_D), (2, CTRL_C)],
    ids=["ctrl-c-base", "eof-base", "ctrl-c-hidden-key", "eof-hidden-key", "ctrl-c-model"],
)
def test_login_cancelled_at_a_prompt_saves_nothing(
    claw_home: ClawHome, llm_server: LLMServer, answered: int, key: str
) -> None:
    before = claw_home.write_config({"gateway": {"port": 18800}}).read_bytes()
    prompts = [BASE_PROMPT, KEY_PROMPT, MODEL_PROMPT]
    with login_on_terminal(claw_home) as session:
        for prompt, text in zip(prompts[:answered], [llm_server.base_url, SECRET], strict=False):
            answer(session, prompt, text)
        session.expect(prompts[answered])
        session.wait_until_reading()
        session.send(key)
        status, transcript = finish(session)
    assert status == 1, transcript
    # On a line of its own, and the last thing shown.
    assert transcript.endswith("\n" + CANCELLED), transcript
    assert claw_home.config_file.read_bytes() == before
    assert sorted(p.name for p in claw_home.path.iterdir()) == ["config.json"]


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
    keys = proxy_breakers(Config.model_validate(json.loads(claw_home.config_file.read_text())))
    breakers = Breakers(redis_server.client(), threshold=2, cooldown_sec=600)
    assert not breakers.record_failure(keys["proxy"])
    assert breakers.record_failure(keys["proxy"])
    breakers.record_failure(keys["b"])
    result = clawctl(claw_home, "status")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("breakers"))
    assert "proxy=open until " in line and "b=closed (1 recent failures)" in line
    report = json.loads(clawctl(claw_home, "status", "--json").stdout)
    assert report["breakers"]["proxy"]["state"] == "open"
    assert report["breakers"]["b"] == {"state": "closed", "failures": 1, "open_until": None}
