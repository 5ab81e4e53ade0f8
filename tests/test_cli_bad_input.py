"""``clawctl`` against hostile input, run for real: config files in the wrong encoding, too
deep or with numbers and strings that cannot be used, arguments and terminal input that are
not UTF-8, an LLM answering absurdly nested JSON, a taken port, a child that cannot start,
Redis down, a $CLAW_HOME that is a file. Each gives one clear message naming the file, path
or value, a non-zero exit, and never a traceback (ClawHome.clawctl asserts that)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from claw_worker.cli import ClawGroup
from claw_worker.config.schema import Config
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port, pid_alive, stop_process, wait_for
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

DEEP = 100_000  # far past Python's recursion limit
NESTED = "[" * DEEP + "]" * DEEP
# Every command that reads the config file, with arguments that reach that point.
READERS = [
    ("config", "check"),
    ("config", "get", "gateway.port"),
    ("config", "set", "gateway.port", "1234"),
    ("status",),
    ("agent", "-m", "hi"),
]


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """``result`` failed with a message (not an internal error) holding each of ``expected``."""
    text = output(result)
    assert result.returncode != 0, text
    assert "internal error" not in text, text
    for part in expected:
        assert part in text, text
    return text


# ---- the config file -----------------------------------------------------------------------

BAD_FILES = {
    "invalid-utf8": (b'{"gateway": {"token": "\xff\xfe"}}', "not UTF-8 text: byte 0xff"),
    "latin-1": ('{"agents": {"defaults": {"model": "café"}}}'.encode("latin-1"), "byte 0xe9"),
    "utf-16-bom": ('{"gateway": {"port": 9000}}'.encode("utf-16"), "UTF-16"),
    "nested": (('{"gateway": ' + NESTED + "}").encode(), "nested too deeply"),
    "5000-digits": (('{"gateway": {"port": ' + "9" * 5000 + "}}").encode(), "gateway.port"),
    "lone-surrogate": (b'{"agents": {"defaults": {"model": "\\ud800"}}}', "agents.defaults.model"),
}


@pytest.mark.parametrize("args", READERS, ids=" ".join)
@pytest.mark.parametrize("kind", BAD_FILES)
def test_unusable_config_file_is_named_not_a_traceback(
    claw_home: ClawHome, kind: str, args: tuple[str, ...]
) -> None:
    content, expected = BAD_FILES[kind]
    claw_home.config_file.write_bytes(content)
    result = claw_home.clawctl(*args)
    refused(result, str(claw_home.config_file), expected)
    assert claw_home.config_file.read_bytes() == content


def test_config_file_problems_say_where(claw_home: ClawHome) -> None:
    claw_home.config_file.write_bytes(
        '{\n  "agents": {"defaults": {"model": "café"}}}'.encode("latin-1")
    )
    refused(claw_home.clawctl("config", "check"), "line 2 column 40", "save the file as UTF-8")
    claw_home.config_file.write_text('{"gateway": ' + NESTED + "}")
    refused(claw_home.clawctl("config", "check"), "more than 32 levels at line 1 column")
    claw_home.config_file.write_text('{"gateway": {"port": ' + "9" * 5000 + "}}")
    refused(claw_home.clawctl("config", "check"), "gateway.port: a number with 5000 digits")
    claw_home.write_config({"providers": {"proxy": {"timeout_sec": float("inf")}}})
    refused(claw_home.clawctl("config", "check"), "providers.proxy.timeout_sec", "not a finite")


def test_utf8_bom_is_accepted(claw_home: ClawHome) -> None:
    claw_home.config_file.write_bytes('{"gateway": {"port": 9000}}'.encode("utf-8-sig"))
    assert claw_home.clawctl("config", "get", "gateway.port").stdout.strip() == "9000"


def test_lone_surrogate_is_refused_and_config_set_can_replace_it(claw_home: ClawHome) -> None:
    claw_home.config_file.write_text('{"agents": {"defaults": {"model": "m\\ud800"}}}')
    check = claw_home.clawctl("config", "check")
    refused(check, "agents.defaults.model", "lone surrogate", "m\\ud800")
    fixed = claw_home.clawctl("config", "set", "agents.defaults.model", "gpt")
    assert fixed.returncode == 0, fixed.stderr
    assert claw_home.clawctl("config", "check").returncode == 0
    # ... and one cannot be set either.
    result = claw_home.clawctl("config", "set", "agents.defaults.model", '"\\udfff"')
    refused(result, "agents.defaults.model", "lone surrogate")
    assert json.loads(claw_home.config_file.read_text())["agents"]["defaults"]["model"] == "gpt"


def test_config_set_takes_pairs_together_and_refuses_a_broken_list(claw_home: ClawHome) -> None:
    claw_home.write_config({"agents": {"defaults": {"heartbeat": {"every_sec": 600}}}})
    before = claw_home.config_file.read_bytes()
    channel, chat = (
        "agents.defaults.heartbeat.target_channel",
        "agents.defaults.heartbeat.target_chat_id",
    )
    # Valid only together: one alone is refused, saying how to set both.
    refused(claw_home.clawctl("config", "set", channel, "telegram"),
            "set both target_channel and target_chat_id", f"{channel} telegram {chat}")  # fmt: skip
    refused(claw_home.clawctl("config", "set", channel, "telegram", chat),
            f"{chat!r} has no value")  # fmt: skip
    refused(claw_home.clawctl("config", "set", channel, "telegram", channel, "discord"),
            f"{channel} is given twice")  # fmt: skip
    refused(claw_home.clawctl("config", "set", "gateway.port", "-1"),  # a value, not an option
            "gateway.port: Input should be greater than or equal to 1")  # fmt: skip
    assert claw_home.config_file.read_bytes() == before
    done = claw_home.clawctl("config", "set", channel, "telegram", chat, "42")
    assert done.returncode == 0, done.stderr
    heartbeat = json.loads(claw_home.config_file.read_text())["agents"]["defaults"]["heartbeat"]
    assert heartbeat == {"every_sec": 600, "target_channel": "telegram", "target_chat_id": "42"}
    # A section written whole replaces it; what it leaves out is named, not lost silently.
    whole = claw_home.clawctl("config", "set", "agents.defaults.heartbeat", '{"enabled": false}')
    assert whole.returncode == 0, whole.stderr
    assert "(dropped from the file: every_sec, target_channel, target_chat_id)" in whole.stdout


def test_config_set_on_a_file_invalid_elsewhere_says_to_fix_the_file(claw_home: ClawHome) -> None:
    # Two problems, as a hand edit (or a setting an upgrade checks more strictly) leaves them.
    claw_home.write_config({"tools": {"exec": {"deny_patterns": [""]}},
                            "channels": {"telegram": {"allow_from": [" 12"]}}})  # fmt: skip
    before = claw_home.config_file.read_bytes()
    result = claw_home.clawctl("config", "set", "channels.telegram.allow_from", '["12"]')
    refused(result, "tools.exec.deny_patterns: '' matches the empty text",
            "config.json was already invalid before this change: edit the file")  # fmt: skip
    assert claw_home.config_file.read_bytes() == before
    # One problem of a valid file: no such note.
    claw_home.write_config({})
    result = claw_home.clawctl("config", "set", "channels.telegram.allow_from", '[" 12"]')
    refused(result, "' 12' has spaces around it: write '12'")
    assert "already invalid" not in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [("9" * 5000, "a number with 5000 digits"), ("[" * 50_000 + "]" * 50_000, "nested too deeply")],
    ids=["5000-digits", "nested"],
)
def test_config_set_refuses_unusable_values(claw_home: ClawHome, value: str, expected: str) -> None:
    claw_home.write_config({"gateway": {"port": 9000}})
    before = claw_home.config_file.read_bytes()
    refused(claw_home.clawctl("config", "set", "gateway.port", value), "the value", expected)
    assert claw_home.config_file.read_bytes() == before


def test_config_set_refuses_an_object_or_array_where_text_is_wanted(claw_home: ClawHome) -> None:
    claw_home.write_config({"gateway": {"token": "before-123456"}})
    before = claw_home.config_file.read_bytes()
    for value, kind in (('{"a":1}', "a JSON object"), ('["x"]', "a JSON array")):
        result = claw_home.clawctl("config", "set", "gateway.token", value)
        refused(result, "gateway.token: Input should be a valid string",
                f"gateway.token: the value given is {kind}", "write it as a JSON string")  # fmt: skip
        assert claw_home.config_file.read_bytes() == before
    # A number is still taken as the text it was typed as.
    assert claw_home.clawctl("config", "set", "gateway.token", "123456789").returncode == 0
    assert json.loads(claw_home.config_file.read_text())["gateway"]["token"] == "123456789"


def test_config_set_refuses_a_string_too_long_without_echoing_it(claw_home: ClawHome) -> None:
    claw_home.write_config({})
    before = claw_home.config_file.read_bytes()
    result = claw_home.clawctl("config", "set", "agents.defaults.model", "m" * 100_000)
    text = refused(result, "agents.defaults.model: String should have at most 256 characters")
    assert len(text) < 1000 and claw_home.config_file.read_bytes() == before


def test_every_string_setting_has_a_length_limit() -> None:
    """Each text field of the schema refuses 100,000 characters, naming itself (by its
    length limit, or for a closed set of words or a URL, by its own check)."""
    from claw_worker.config.store import ConfigError, set_path, validate_config_data

    def strings(node: object, path: str) -> Iterator[tuple[str, object]]:
        if isinstance(node, dict):
            for key, child in node.items():
                yield from strings(child, f"{path}.{key}" if path else key)
        elif isinstance(node, str):
            yield path, "x" * 100_000
        elif isinstance(node, list) and all(isinstance(v, str) for v in node):
            yield path, ["x" * 100_000]

    found = list(strings(Config().model_dump(mode="json"), ""))
    assert len(found) > 50
    for dotted, value in found:
        with pytest.raises(ConfigError, match="\n" + re.escape(dotted) + r"(\.0)?: "):
            validate_config_data(set_path({}, dotted, value), "c")


def test_environment_override_that_is_not_utf8_is_named(claw_home: ClawHome) -> None:
    env = claw_home.env(CLAW_REDIS_URL="redis://\udcff")  # the byte 0xff, as Python sees it
    for args in (("status",), ("agent", "-m", "hi")):
        result = subprocess.run(
            [sys.executable, "-m", "claw_worker.cli", *args],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        refused(result, "CLAW_REDIS_URL", "redis.url", "lone surrogate")


def test_onboard_names_a_workspace_file_that_is_not_utf8(claw_home: ClawHome) -> None:
    assert claw_home.clawctl("onboard").returncode == 0
    soul = claw_home.workspace / "SOUL.md"
    soul.write_bytes("Mon âme\n".encode("latin-1"))
    refused(claw_home.clawctl("onboard"), str(soul), "not UTF-8 text")
    assert soul.read_bytes() == "Mon âme\n".encode("latin-1")


# ---- arguments and terminal input that are not UTF-8 ------------------------------------------


def clawctl_bytes(
    home: ClawHome, *args: str | bytes, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """``clawctl`` with arguments as raw bytes, as a shell passes $'\\xff' (not UTF-8)."""
    result = subprocess.run(
        [sys.executable, "-m", "claw_worker.cli", *(os.fsencode(a) for a in args)],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        env=home.env(),
        cwd=home.path,
        capture_output=True,
        timeout=60,
    )
    text = subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )
    assert "Traceback" not in text.stderr, text.stderr
    return text


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("agent", "-m", b"\xff\xfe"), "the value of -m"),
        (("agent", "--session", b"cli:\xe9", "-m", "hi"), "the value of --session"),
        (("config", "set", "agents.defaults.model", b"caf\xe9"), "argument 4"),
        (("login", b"--api-key=\xff", "--model", "m", "--no-check"), "the value of --api-key"),
    ],
    ids=["agent-m", "agent-session", "config-set", "login-key"],
)
def test_arguments_that_are_not_utf8_are_named(
    claw_home: ClawHome, llm_server: LLMServer, args: tuple[str | bytes, ...], named: str
) -> None:
    proxy = {"api_base": llm_server.base_url, "models": ["m"]}
    claw_home.write_config({"providers": {"proxy": proxy}})
    before = claw_home.config_file.read_bytes()
    result = clawctl_bytes(claw_home, *args)
    refused(result, named, "is not UTF-8 text")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert llm_server.requests == [] and claw_home.config_file.read_bytes() == before


def test_repl_refuses_a_line_that_is_not_utf8_and_goes_on(
    claw_home: ClawHome, llm_server: LLMServer, redis_server: RedisServer
) -> None:
    proxy = {"api_base": llm_server.base_url, "models": ["m"]}
    claw_home.write_config({"providers": {"proxy": proxy}, "redis": {"url": redis_server.url}})
    result = clawctl_bytes(claw_home, "agent", stdin=b"caf\xe9\nhello\nexit\n")
    assert result.returncode == 0, result.stderr
    assert "not UTF-8 text (b'caf\\xe9'); not sent" in result.stderr
    assert "echo: hello" in result.stdout
    assert [r["messages"][-1]["content"] for r in llm_server.requests] == ["hello"]


# ---- the LLM answering absurdly nested JSON ---------------------------------------------------


class RawLLM:
    """A loopback endpoint answering every POST with one fixed status and body."""

    def __init__(self, status: int, body: str) -> None:
        answer = (status, body.encode())

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(answer[0])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"


@pytest.fixture
def raw_llm(request: pytest.FixtureRequest) -> Iterator[RawLLM]:
    server = RawLLM(*request.param)
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.mark.parametrize(
    "raw_llm", [(200, NESTED), (500, NESTED)], indirect=True, ids=["200", "500"]
)
def test_llm_answer_nested_too_deep_is_a_provider_error(
    claw_home: ClawHome, raw_llm: RawLLM, redis_server: RedisServer
) -> None:
    proxy = {"api_base": raw_llm.base_url, "models": ["m"]}
    claw_home.write_config({"providers": {"proxy": proxy}, "redis": {"url": redis_server.url}})
    result = claw_home.clawctl("agent", "-m", "hi")
    refused(result, "the LLM provider failed", raw_llm.base_url)


def test_llm_tool_arguments_nested_too_deep_go_back_to_the_model(
    claw_home: ClawHome, llm_server: LLMServer, redis_server: RedisServer
) -> None:
    proxy = {"api_base": llm_server.base_url, "models": ["m"]}
    claw_home.write_config({"providers": {"proxy": proxy}, "redis": {"url": redis_server.url}})
    llm_server.reply_tool_call("read_file", NESTED)
    llm_server.reply("sorry, bad arguments")
    result = claw_home.clawctl("agent", "-m", "hi")
    assert result.returncode == 0, result.stderr
    assert "sorry, bad arguments" in result.stdout
    tool_result = llm_server.requests[1]["messages"][-1]
    assert tool_result["role"] == "tool" and "JSON" in tool_result["content"]


# ---- the boundary for anything else ----------------------------------------------------------


def test_an_unexpected_error_is_one_line_unless_debug() -> None:
    @click.group(cls=ClawGroup)
    @click.option("--debug", is_flag=True)
    def cli(debug: bool) -> None:
        pass

    @cli.command()
    def boom() -> None:
        raise RuntimeError("kaput\nsecond line")

    result = CliRunner().invoke(cli, ["boom"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: internal error: RuntimeError: kaput second line "
        "(run with --debug for the traceback)\n"
    )
    debug = CliRunner().invoke(cli, ["--debug", "boom"])
    assert isinstance(debug.exception, RuntimeError)


# ---- clear errors: a taken port, a child that cannot start, Redis down, login, CLAW_HOME -------


def processes_of(home: Path) -> list[int]:
    """Live processes started for ``home`` (their environment or command line names it)."""
    found = []
    needles = (f"CLAW_HOME={home}\0".encode(), f"{home}/".encode())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n in seen for n in needles) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_leftovers(claw_home: ClawHome) -> Iterator[None]:
    """Whatever the test's outcome, no process started for this home outlives it."""
    yield
    for pid in processes_of(claw_home.path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gateway_run(home: ClawHome, out_path: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "claw_worker.cli", "gateway", "run"],
            env=home.env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_gateway_run_with_its_port_taken_says_so_once_and_stops(
    claw_home: ClawHome, no_leftovers: None
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        claw_home.write_config({"gateway": {"port": port}})
        out_path = claw_home.path / "gateway.out"
        proc = gateway_run(claw_home, out_path)
        try:
            assert proc.wait(timeout=30) == 1
        finally:
            stop_process(proc)
    text = out_path.read_text()
    assert text.count("Error:") == 1 and f"port {port} on 127.0.0.1 is already in use" in text
    assert "gateway.port" in text and "Traceback" not in text
    assert " pid " not in text and "restarting" not in text  # nothing was started
    assert processes_of(claw_home.path) == []
    assert not (claw_home.path / "run" / "redis.sock").exists()


def test_gateway_run_takes_its_port_from_claw_gateway_port(
    claw_home: ClawHome, no_leftovers: None
) -> None:
    """CLAW_GATEWAY_PORT overrides gateway.port (./scripts/fleet on another port); a taken
    or a bad one is named as such."""
    for value, said in (("abc", "CLAW_GATEWAY_PORT must be a whole number, not 'abc'"),
                        ("70000", "environment (CLAW_GATEWAY_PORT): invalid config")):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "claw_worker.cli", "gateway", "run"],
            env=claw_home.env(CLAW_GATEWAY_PORT=value), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1 and said in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        claw_home.write_config({"gateway": {"port": free_port()}})
        out_path = claw_home.path / "gateway.out"
        proc = gateway_run(claw_home, out_path, CLAW_GATEWAY_PORT=str(port))
        try:
            assert proc.wait(timeout=30) == 1
        finally:
            stop_process(proc)
    text = out_path.read_text()
    assert f"CLAW_GATEWAY_PORT: port {port} on 127.0.0.1 is already in use" in text, text
    assert "or use `CLAW_GATEWAY_PORT=N`" in text, text
    assert processes_of(claw_home.path) == []


def test_gateway_run_stops_when_a_child_keeps_dying(
    claw_home: ClawHome, llm_server: LLMServer, no_leftovers: None
) -> None:
    port = free_port()
    claw_home.write_config(
        {
            "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["m1"]}},
            "gateway": {"port": port},
            "worker": {"concurrency": 2},
        }
    )
    out_path = claw_home.path / "gateway.out"
    proc = gateway_run(claw_home, out_path)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200,
                 timeout=90, what="gateway /health")  # fmt: skip
        worker = int(re.findall(r"^worker\s+pid (\d+)", out_path.read_text(), re.M)[0])
        # The file breaks under the running fleet: every new worker exits at once.
        claw_home.write_config({"gateway": {"port": "not a port"}})
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=120) == 1, out_path.read_text()
    finally:
        stop_process(proc)
    text = out_path.read_text()
    # The worker, or beat if it happens to restart too (it exits on the broken file).
    found = re.search(
        r"^Error: (worker|beat) keeps exiting right after it starts \(restarted 3 ", text, re.M
    )
    assert found, text
    assert f"Last lines of {claw_home.path / 'logs' / found[1]}.out" in text
    assert "gateway.port: Input should be a valid integer" in text  # the child's own words
    assert "stopped" in text and "Traceback" not in text.split("Error:")[-1]
    wait_for(lambda: processes_of(claw_home.path) == [], timeout=20, what="no process left")


def test_status_with_redis_down_prints_the_report_and_fails(claw_home: ClawHome) -> None:
    claw_home.write_config({"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    human = claw_home.clawctl("status")
    assert human.returncode == 1 and "unreachable" in human.stdout and "queues" in human.stdout
    as_json = claw_home.clawctl("status", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["redis"]["reachable"] is False


def test_login_names_the_field_and_the_schemes(claw_home: ClawHome) -> None:
    for check in ((), ("--no-check",)):
        args = ("login", "--api-base", "ftp://x", "--api-key", "k", "--model", "m", *check)
        result = claw_home.clawctl(*args)
        refused(result, "--api-base", "http:// or https://", '"ftp://x"')
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "pydantic" not in result.stderr and not claw_home.config_file.exists()


@pytest.mark.parametrize(
    "args",
    [
        *READERS,
        ("config", "reload"),
        ("onboard",),
        ("login", "--api-base", "http://127.0.0.1:1/v1", "--api-key", "k", "--model", "m"),
        ("gateway", "run"),
    ],
    ids=" ".join,
)
def test_claw_home_that_is_a_file_is_named(
    claw_home: ClawHome, no_leftovers: None, args: tuple[str, ...]
) -> None:
    home = claw_home.path / "home"
    home.write_text("not a directory\n")
    result = subprocess.run(
        [sys.executable, "-m", "claw_worker.cli", *args],
        env=claw_home.env(CLAW_HOME=str(home)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    refused(result, f"CLAW_HOME is {home}, which is a file, not a directory")
    assert home.read_text() == "not a directory\n"


def test_config_under_a_file_is_named(claw_home: ClawHome) -> None:
    (claw_home.path / "plain").write_text("x")
    result = claw_home.clawctl("--config", "plain/config.json", "config", "check")
    refused(result, f"{claw_home.path / 'plain'} is a file, not a directory")


def test_config_set_in_a_directory_that_does_not_exist_is_refused(claw_home: ClawHome) -> None:
    missing = claw_home.path / "nonexistent" / "c.json"
    result = claw_home.clawctl("--config", str(missing), "config", "set", "gateway.port", "9000")
    refused(result, f"the directory {missing.parent} does not exist", "clawctl onboard")
    assert not missing.parent.exists()


def test_directories_this_host_cannot_make_are_named_by_their_field(claw_home: ClawHome) -> None:
    # Root may write anywhere by the permission bits, yet nothing can be made under /proc.
    claw_home.write_config({"logging": {"dir": "/proc/nope/logs"},
                            "agents": {"defaults": {"workspace": "/proc/foo"}},
                            "providers": {"proxy": {"api_base": "http://127.0.0.1:9/v1",
                                                   "models": ["m"]}}})  # fmt: skip
    wanted = ("logging.dir: cannot create the log directory /proc/nope/logs",
              "agents.defaults.workspace: cannot create the workspace /proc/foo")  # fmt: skip
    refused(claw_home.clawctl("config", "check"), *wanted)
    refused(claw_home.clawctl("agent", "-m", "hi"), *wanted)
    refused(claw_home.clawctl("gateway", "run"), *wanted)
    claw_home.write_config({})
    for field, value in (("logging.dir", "/proc/nope/logs"),
                         ("agents.defaults.workspace", "/proc/foo")):  # fmt: skip
        refused(claw_home.clawctl("config", "set", field, value), f"{field}: cannot create")
        assert json.loads(claw_home.config_file.read_text()) == {}
    assert sorted(p.name for p in claw_home.path.iterdir()) == ["config.json"]  # no probe left


# ---- settings that have no effect yet -------------------------------------------------------


def test_config_check_warns_about_settings_without_effect(claw_home: ClawHome) -> None:
    claw_home.write_config(
        {
            "sentinel": {"interval_sec": 30, "enabled": True},  # active: no warning
            "channels": {"telegram": {"enabled": False}},  # the default: no warning
            "agents": {"defaults": {"texts": {"think_only_fallback": "Thought."}}},
            "gateway": {"port": 9000},
        }
    )
    result = claw_home.clawctl("config", "check")
    assert result.returncode == 0 and result.stdout.startswith("OK ")
    warnings = result.stderr.splitlines()
    assert warnings == [
        "warning: agents.defaults.texts.think_only_fallback is set but has no effect yet: "
        "no code shows this text yet",
    ]
    set_result = claw_home.clawctl("config", "set", "agents.defaults.texts.subagents_none", "x")
    assert set_result.returncode == 0
    assert set_result.stderr.splitlines() == [
        "warning: agents.defaults.texts.subagents_none is set but has no effect yet: "
        "no code shows this text yet",
    ]
    assert claw_home.clawctl("config", "set", "cron.max_jobs", "5").stderr == ""
    assert claw_home.clawctl("config", "set", "gateway.port", "9001").stderr == ""


def test_every_inactive_setting_is_in_the_schema() -> None:
    from claw_worker.config.inactive import NOT_YET_ACTIVE

    defaults = Config().model_dump()
    for dotted in NOT_YET_ACTIVE:
        node = defaults
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, dotted
            node = node[part]
