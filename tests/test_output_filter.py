"""Output filtering (issue 14 point 5) through the real paths: a fleet whose scripted LLM
answers with secrets, read back over the HTTP API; the log files; the Celery task events
Flower shows; the ``message`` tool's posts on the outbound stream; ``clawctl config get``.
What the model itself reads is not filtered."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from claw_worker import constants as k
from claw_worker.celery_config import celery_settings
from claw_worker.config import Config
from claw_worker.config.store import load_config
from claw_worker.contract import OutboundMessage
from claw_worker.tools import ToolContext, default_tools
from tests.campaign import record
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer

CONFIG_KEY = "sk-test-secret-key-123456"  # the fleet's providers.proxy.api_key (fleet_config)
FAKE_KEY = "sk-proj-Zx81Kq02LmWn7Yt5Rv3Bc9De"
GITHUB_TOKEN = "ghp_" + "Q7w" * 12
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbXkifQ.s1gN4tUr3-abcDEF123"
CARD = "4111 1111 1111 1111"  # passes the Luhn check
ORDER = "4111 1111 1111 1112"  # 16 digits that fail it: an order number, left alone
SECRETS = (CONFIG_KEY, FAKE_KEY, GITHUB_TOKEN, JWT, CARD)
ANSWER = (
    f"Here you go: key {FAKE_KEY}, the proxy key {CONFIG_KEY}, token {GITHUB_TOKEN}, "
    f"session {JWT}, card {CARD}; your order number is {ORDER}."
)


def _leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


class TaskEvents:
    """The Celery events of the fleet, as Flower receives them (a real event receiver on
    the fleet's broker), collected in a thread."""

    def __init__(self, config: Config) -> None:
        self.app = Celery("flower-like", set_as_current=False)
        self.app.conf.update(celery_settings(config))
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self.app.connection() as connection:
            self._receiver = self.app.events.Receiver(
                connection, handlers={"*": self.events.append}
            )
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        assert self._ready.wait(30), "the event receiver did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)

    def of_task(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("type") == kind]


def test_replies_logs_and_task_events_hold_no_secret(
    fleet_factory: Any, llm_server: Any, claw_home: ClawHome
) -> None:
    user_text = f"SECRETS please: my card is {CARD} and my key {FAKE_KEY}"
    llm_server.reply(ANSWER, when="SECRETS please")
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    config = load_config(claw_home.config_file)
    with TaskEvents(config) as events, fleet.client() as http:
        sent = http.post("/api/message", json={"text": user_text, "session": "api:amy",
                                               "wait": True, "timeout": 60})  # fmt: skip
        assert sent.status_code == 200, sent.text
        reply = sent.json()["reply"]
        stored = http.get(f"/api/messages/{sent.json()['message_id']}")
        assert stored.status_code == 200, stored.text
        wait_for(lambda: events.of_task("task-succeeded"), timeout=30, what="task events")

    # The reply, as sent and as stored: every secret masked, the order number intact.
    for text in (reply, stored.json()["reply"]):
        assert _leaked(text) == [], text
        assert "card ****1111;" in text and ORDER in text
        assert "key sk-****," in text and "token ghp_****," in text and "eyJ****" in text
    # The model's own context is not filtered: it got the user's text as written.
    assert user_text in json.dumps(llm_server.requests_for("SECRETS please")[-1])
    reply_escapes = len(_leaked(reply)) + len(_leaked(stored.json()["reply"]))
    record("output: secrets in replies", tried=2 * len(SECRETS),
           rejected=2 * len(SECRETS) - reply_escapes, escapes=reply_escapes)  # fmt: skip

    # The logs: every file of every process, and what they wrote to their consoles.
    logs = [p.read_text(errors="replace") for p in (claw_home.path / "logs").glob("*.log*")]
    logs += [fleet.output("ingress"), fleet.output("w1")]
    assert any("message done" in text for text in logs)  # the files are the real ones
    log_escapes = sum(len(_leaked(text)) for text in logs)
    record("output: secrets in logs", tried=len(SECRETS) * len(logs),
           rejected=len(SECRETS) * len(logs) - log_escapes, escapes=log_escapes)  # fmt: skip
    assert log_escapes == 0, [_leaked(text) for text in logs]

    # Flower's view: the drain task carries the session key, never the message's text.
    received = [e for e in events.of_task("task-received") if e.get("name") == k.TASK_DRAIN]
    assert received, events.events
    # (the enqueue script writes argsrepr itself: a JSON list of the one session key)
    assert all(e["args"] == "['api:amy']" and e["kwargs"] == "{}" for e in received), received
    shown = json.dumps(events.events, default=str)
    event_escapes = len(_leaked(shown)) + ("SECRETS please" in shown)
    record("output: Flower task arguments", tried=len(SECRETS) + 1,
           rejected=len(SECRETS) + 1 - event_escapes, escapes=event_escapes)  # fmt: skip
    assert event_escapes == 0


def test_replies_keep_shapes_when_turned_off_but_never_the_config_secrets(
    fleet_factory: Any, llm_server: Any
) -> None:
    llm_server.reply(ANSWER, when="unfiltered")
    fleet = fleet_factory(security__redact_replies=False)
    fleet.start_ingress()
    fleet.start_worker()
    with fleet.client() as http:
        sent = http.post("/api/message", json={"text": "unfiltered please", "wait": True,
                                               "timeout": 60})  # fmt: skip
    assert sent.status_code == 200, sent.text
    reply = sent.json()["reply"]
    assert FAKE_KEY in reply and CARD in reply  # asked for: the shapes pass
    assert CONFIG_KEY not in reply and "the proxy key ****," in reply  # never the config's
    record("output: config secrets in unfiltered replies", tried=1,
           rejected=int(CONFIG_KEY not in reply), escapes=int(CONFIG_KEY in reply))  # fmt: skip


def test_message_tool_posts_are_masked(redis_server: RedisServer, tmp_path: Path) -> None:
    config = Config.model_validate(
        {"channels": {"telegram": {"enabled": True, "token": "123:abc"}},
         "providers": {"proxy": {"api_key": CONFIG_KEY}}}
    )  # fmt: skip
    client = redis_server.client()
    ctx = ToolContext(tmp_path, "telegram:7", config, redis=client)
    result = default_tools(config).run(
        "message", {"channel": "telegram", "chat_id": "99", "text": ANSWER}, ctx
    )
    assert result.startswith("Message sent to telegram:99"), result
    [entry] = client.xrange(k.OUTBOUND_STREAM)
    post = OutboundMessage.model_validate_json(entry[1]["data"])
    assert _leaked(post.text) == [] and ORDER in post.text, post.text
    escapes = len(_leaked(post.text))
    record("output: message tool posts", tried=len(SECRETS),
           rejected=len(SECRETS) - escapes, escapes=escapes)  # fmt: skip


def test_config_get_masks_secrets(claw_home: ClawHome) -> None:
    claw_home.write_config({"providers": {"proxy": {
        "api_base": "https://amy:proxy-pass-77@llm.example.com/v1", "api_key": FAKE_KEY,
    }}, "gateway": {"token": "gw-token-0123456789"}})  # fmt: skip
    asked = {
        "providers.proxy.api_key": FAKE_KEY,
        "providers.proxy.api_base": "proxy-pass-77",  # a password where no name says so
        "providers": FAKE_KEY,
        "gateway.token": "gw-token-0123456789",
        "gateway": "gw-token-0123456789",
    }
    escapes = server_errors = 0
    for path, secret in asked.items():
        got = claw_home.clawctl("config", "get", path)
        server_errors += got.returncode != 0
        escapes += secret in got.stdout
        assert got.returncode == 0 and secret not in got.stdout, (path, got.stdout)
        assert "****" in got.stdout
    assert json.loads(claw_home.clawctl("config", "get", "providers.proxy.api_base").stdout) == (
        "https://amy:****@llm.example.com/v1"
    )
    record("output: config get", tried=len(asked), rejected=len(asked) - escapes,
           escapes=escapes, server_errors=server_errors)  # fmt: skip


def test_command_answers_are_masked(claw_home: ClawHome, redis_server: RedisServer) -> None:
    """Slash commands answer in the ingress (/status, /config get ...): their answers pass
    the same filter as replies, so a secret where no field name says so is masked too."""
    from claw_worker.commands import run_command  # the ingress's own dispatcher
    from claw_worker.commands.registry import CommandContext

    base = "https://amy:proxy-pass-77@llm.example.com/v1"
    claw_home.write_config({"providers": {"proxy": {"api_base": base, "api_key": FAKE_KEY}}})
    config = load_config(claw_home.config_file)

    async def ask(text: str) -> str | None:
        client = aioredis.from_url(redis_server.url, decode_responses=True)
        try:
            ctx = CommandContext(client, config, "api:op", admin=True, channel="api")
            return await run_command(ctx, text)
        finally:
            await client.aclose()

    answers = {path: asyncio.run(ask(f"/config get {path}")) or "" for path in
               ("providers.proxy.api_base", "providers.proxy", "providers.proxy.api_key")}  # fmt: skip
    escapes = sum(s in answer for answer in answers.values() for s in ("proxy-pass-77", FAKE_KEY))
    record("output: command answers", tried=2 * len(answers),
           rejected=2 * len(answers) - escapes, escapes=escapes)  # fmt: skip
    assert escapes == 0, answers
    assert json.loads(answers["providers.proxy.api_base"]) == "https://amy:****@llm.example.com/v1"


def test_pipeline_reports_are_masked(redis_server: RedisServer) -> None:
    """A pipeline's report quotes its tasks' results to the chat that made it."""
    from claw_worker.work import pipelines
    from claw_worker.work.model import Pipeline
    from claw_worker.work.transitions import Changes

    pipeline = Pipeline.model_validate({
        "id": "p1", "goal": "collect the keys", "nonce": "n1", "status": "done",
        "creator": {"session_key": "telegram:42", "channel": "telegram", "chat_id": "42"},
        "tasks": [{"id": "a", "role": "worker", "goal": "find", "state": "done",
                   "result": ANSWER}],
    })  # fmt: skip
    client = redis_server.client()
    config = Config.model_validate({"providers": {"proxy": {"api_key": CONFIG_KEY}}})
    pipelines.report(client, config, pipeline, Changes(finished=True))
    [entry] = client.xrange(k.OUTBOUND_STREAM)
    report = OutboundMessage.model_validate_json(entry[1]["data"])
    assert "Pipeline p1 finished" in report.text and ORDER in report.text, report.text
    escapes = len(_leaked(report.text))
    record("output: pipeline reports", tried=len(SECRETS),
           rejected=len(SECRETS) - escapes, escapes=escapes)  # fmt: skip
    assert escapes == 0, report.text
