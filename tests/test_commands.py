"""Slash commands and run state over the real HTTP API with a real worker behind it."""

from __future__ import annotations

import re

from tests.fixtures.procs import wait_for

ADMIN_TOKEN = "cmd-token-abcdefgh"


def say(http, text: str, session: str = "api:cmd", **extra) -> dict:
    resp = http.post("/api/message", json={"text": text, "session": session, **extra})
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def test_help_unknown_and_not_a_command(fleet_factory, llm_server) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    with fleet.client() as http:
        help_reply = say(http, "/help")["reply"]
        for name in ("/help", "/stop", "/status", "/config", "/lang"):
            assert name in help_reply
        unknown = say(http, "/frobnicate now")["reply"]
        assert unknown.startswith("Unknown command /frobnicate") and "/status" in unknown
        # A path is not a command: it goes to the agent.
        assert (
            say(http, "/etc/hosts what is it", wait=True)["reply"] == "echo: /etc/hosts what is it"
        )


def test_runs_status_and_wait_by_command_and_by_request(fleet_factory, llm_server) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    with fleet.client() as http:
        assert "no runs yet" in say(http, "/status")["reply"]
        say(http, "first", wait=True)
        run = say(http, "/status run latest")["reply"]
        run_id = re.match(r"(run-\d+-\d+): done", run).group(1)
        assert "llm calls 1" in run
        assert say(http, f"/status run {run_id}")["reply"] == run
        assert say(http, "show the latest run")["reply"].startswith(f"{run_id}: done")

        llm_server.reply("slow answer", when="slow-msg", delay=2)
        say(http, "slow-msg")
        wait_for(lambda: llm_server.requests_for("slow-msg"), timeout=30, what="slow run started")
        status = say(http, "/status")["reply"]
        assert "running" in status
        waited = say(http, "/status wait latest 30")["reply"]
        assert re.match(r"run-\d+-\d+: done", waited) and not waited.startswith(run_id)
        slow_id = waited.split(":")[0]
        assert say(http, f"tell me when {slow_id} finishes")["reply"].startswith(f"{slow_id}: done")
        assert "No run run-1-1" in say(http, "/status run run-1-1")["reply"]
        assert "number of seconds" in say(http, "/status wait latest soon")["reply"]
        assert say(http, "/status bogus")["reply"].startswith("Usage: /status")


def test_a_run_exists_from_the_moment_its_message_is_queued(fleet_factory, llm_server) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()  # no worker yet: the messages wait
    with fleet.client() as http:
        first, second = say(http, "queued one"), say(http, "queued two")
        run_id = first["run_id"]
        assert re.fullmatch(r"run-\d+-\d+", run_id) and second["run_id"] != run_id
        queued = say(http, f"/status run {run_id}")["reply"]
        assert queued.startswith(f"{run_id}: queued (waiting for "), queued
        assert f"message {first['message_id']}" in queued
        assert say(http, "/status run latest")["reply"].startswith(f"{second['run_id']}: queued")

        llm_server.reply_error(500, when="queued one")  # the first attempt fails, then retried
        fleet.start_worker()
        done = say(http, f"/status wait {run_id} 60")["reply"]
        # The same run went queued -> running -> retrying -> running -> done: no second id.
        assert done.startswith(f"{run_id}: done") and "attempt 2" in done, done
        waited = say(http, f"/status wait {second['run_id']} 60")["reply"]
        assert waited.startswith(f"{second['run_id']}: done")
        record = http.get(f"/api/messages/{first['message_id']}").json()
        assert record["run_id"] == run_id and record["attempts"] == 2


def test_config_and_lang_commands(fleet_factory, claw_home) -> None:
    # /config is for admins: over the API, a listed sender_id with the gateway token.
    fleet = fleet_factory(gateway__token=ADMIN_TOKEN, gateway__admins=["api:op"])
    fleet.start_ingress()
    with fleet.client(ADMIN_TOKEN) as http:
        assert say(http, "/config get gateway.port", sender_id="op")["reply"] == str(fleet.port)
        key = say(http, "/config get providers.proxy.api_key", sender_id="op")["reply"]
        assert "sk-test-secret" not in key and "****" in key
        before = claw_home.config_file.read_bytes()
        refused = say(http, "/config set gateway.port 70000", sender_id="op")["reply"]
        assert refused.startswith("Not changed") and "gateway.port" in refused
        assert "Not changed" in say(http, "/config set gateway.nope 1", sender_id="op")["reply"]
        assert claw_home.config_file.read_bytes() == before
        changed = say(http, "/config set agents.defaults.temperature 0.5", sender_id="op")["reply"]
        assert changed.startswith("agents.defaults.temperature = 0.5"), changed
        assert "Applied by 1 process(es):\n  ingress ingress-" in changed  # this ingress
        assert (
            say(http, "/config get agents.defaults.temperature", sender_id="op")["reply"] == "0.5"
        )
        assert say(http, "/config", sender_id="op")["reply"].startswith("Usage: /config")

        assert say(http, "/lang zh-CN")["reply"] == "Language preference updated to zh-CN"
        assert say(http, "/lang")["reply"] == "Usage: /lang <code>"


def test_lang_takes_known_language_tags_only(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    with fleet.client() as http:
        for tag, kept in (("pt-br", "pt-BR"), ("zh_hant_tw", "zh-Hant-TW"), ("yue", "yue"),
                          ("es-419", "es-419"), ("DE", "de")):  # fmt: skip
            assert say(http, f"/lang {tag}")["reply"] == f"Language preference updated to {kept}"
        for bad in ("xx-nonsense", "en-nonsense", "xx", "???", "english", "en-US-x-private"):
            refused = say(http, f"/lang {bad}")["reply"]
            assert refused.startswith(f'"{bad}": not a language code.'), refused
            assert "pt-BR" in refused, refused  # what a good one looks like


def test_an_admin_command_refusal_says_what_the_command_does(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    with fleet.client() as http:
        learn = say(http, "/autolearn on")["reply"]
        assert learn.startswith("/autolearn is for admins only: it starts or stops autonomous "
                                "learning"), learn  # fmt: skip
        assert "configuration" not in learn, learn
        config = say(http, "/config get gateway.port")["reply"]
        assert config.startswith("/config is for admins only: it reads or changes the fleet's "
                                 "configuration."), config  # fmt: skip


def test_local_agent_answers_slash_commands_with_the_same_registry(
    claw_home, redis_server, llm_server
) -> None:
    import subprocess
    import sys

    claw_home.write_config(
        {
            "redis": {"url": redis_server.url},
            "providers": {"proxy": {"api_base": llm_server.base_url}},
        }
    )
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "claw_worker.cli", "agent", *args],
        env=claw_home.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = run("-m", "/help")
    assert out.returncode == 0 and "/status" in out.stdout
    assert not llm_server.requests, "a slash command never reaches the LLM"
    assert run("-m", "/lang en").stdout.strip() == "Language preference updated to en"
