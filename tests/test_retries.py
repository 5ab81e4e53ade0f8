"""Retries follow the error's kind, on a real fleet (ingress, Celery worker, redis-server)
against the scripted LLM: refusals fail the message after one request with a reply that
says why, a rate limit waits for its Retry-After without holding the worker slot, transient
errors back off and then succeed; and the kinds the providers give HTTP errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.providers import ProviderError
from claw_worker.providers.registry import build_provider
from tests.fixtures.procs import wait_for
from tests.llm_server import LLMServer, error, last_user_text

FAILED_PREFIX = Config().agents.defaults.texts.message_failed.split("%s")[0]


class TimedLLMServer(LLMServer):
    """The scripted server, also noting when each chat request arrived (epoch seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []  # (time, last user text)

    def _record_and_choose(self, body: Any, headers: Any, path: str = "") -> Any:
        self.arrivals.append((time.time(), last_user_text(body)))
        return super()._record_and_choose(body, headers, path or "/v1/chat/completions")

    def arrived(self, marker: str) -> list[float]:
        return [at for at, text in list(self.arrivals) if marker in text]


@pytest.fixture
def llm_server() -> Iterator[TimedLLMServer]:  # overrides tests/fixtures/llm.py here
    server = TimedLLMServer().start()
    try:
        yield server
    finally:
        server.stop()


def post(http: Any, text: str, session: str) -> str:
    resp = http.post("/api/message", json={"text": text, "session": session})
    assert resp.status_code == 202, resp.text
    return resp.json()["message_id"]


def finished(r: Any, session: str, message_id: str, *, timeout: float) -> dict[str, str]:
    def check() -> dict[str, str] | None:
        record = r.hgetall(k.message_key(session, message_id))
        return record if record.get("status") in ("done", "failed", "cancelled") else None

    return wait_for(check, timeout=timeout, interval=0.05, what=f"{message_id} finished")


def replies(r: Any, message_id: str) -> list[dict[str, Any]]:
    found = [json.loads(fields["data"]) for _id, fields in r.xrange(k.OUTBOUND_STREAM)]
    return [e for e in found if e["message_id"] == message_id]


def models_seen(server: LLMServer, marker: str) -> list[str]:
    return [body["model"] for body in server.requests_for(marker)]


# -- refusals fail at once ------------------------------------------------------------------

REFUSALS = {
    "invalid-request": (
        400,
        {"error": {"message": "temperature must be <= 2", "type": "invalid_request_error",
                   "code": "invalid_value"}},
        "refused the request as invalid",
    ),
    "auth": (
        401,
        {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                   "code": "invalid_api_key"}},
        "refused the credentials",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refusal_fails_the_message_after_one_request(
    case: str, fleet_factory: Any, llm_server: TimedLLMServer, redis_server: Any
) -> None:
    status, body, reason = REFUSALS[case]
    llm_server.add_rule("REFUSE", error(status, body))
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    with fleet.client() as http:
        bad = post(http, "REFUSE this", "api:refused")
        after = post(http, "a normal message", "api:refused")
        record = finished(r, "api:refused", bad, timeout=30)
        next_one = finished(r, "api:refused", after, timeout=30)

    assert record["status"] == "failed" and record["attempts"] == "1"
    assert len(llm_server.requests_for("REFUSE")) == 1  # no retry of a refusal
    assert record["reply"].startswith(FAILED_PREFIX) and reason in record["reply"]
    assert f"HTTP {status}" in record["reply"] and body["error"]["message"] in record["reply"]
    [reply] = replies(r, bad)  # the user is told, once
    assert reply["status"] == "failed" and reply["text"] == record["reply"]
    assert next_one["reply"] == "echo: a normal message"  # the session moved on at once


def test_a_400_that_mentions_the_model_is_not_an_unknown_model(
    fleet_factory: Any, llm_server: TimedLLMServer, redis_server: Any
) -> None:
    refusal = {"error": {"message": "This model does not support tools.",
                         "type": "invalid_request_error", "code": None}}  # fmt: skip
    llm_server.add_rule("TOOLS", error(400, refusal), when_model="test-model")
    fleet = fleet_factory(
        providers__proxy__models=["test-model", "test-model-mini"],
        agents__defaults__model="test-model",
    )
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    with fleet.client() as http:
        record = finished(r, "api:tools", post(http, "TOOLS please", "api:tools"), timeout=30)

    assert models_seen(llm_server, "TOOLS") == ["test-model"]  # no switch to the next model
    assert record["status"] == "failed" and record["attempts"] == "1"
    assert "refused the request as invalid" in record["reply"]
    assert "does not support tools" in record["reply"]


# -- a rate limit waits for its Retry-After, without holding the worker slot -----------------


def test_a_rate_limit_waits_for_retry_after_and_frees_the_worker_slot(
    fleet_factory: Any, llm_server: TimedLLMServer, redis_server: Any
) -> None:
    llm_server.push(
        error(429, {"error": {"message": "Rate limit reached", "type": "requests",
                              "code": "rate_limit_exceeded"}}, headers={"Retry-After": "3"}),
        when="LIMITED",
    )  # fmt: skip
    llm_server.reply("answered after the wait", when="LIMITED")
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker("w1", concurrency=1)  # one slot: the other session needs it freed
    r = redis_server.client()
    with fleet.client() as http:
        limited = post(http, "LIMITED one", "api:limited")
        wait_for(lambda: llm_server.arrived("LIMITED"), timeout=30, what="the first request")
        other = post(http, "OTHER session meanwhile", "api:other")
        other_done = finished(r, "api:other", other, timeout=30)
        record = finished(r, "api:limited", limited, timeout=30)

    first, second = llm_server.arrived("LIMITED")
    assert second - first >= 2.5, (first, second)  # Retry-After: 3, not a 2 s backoff
    assert record["status"] == "done" and record["reply"] == "answered after the wait"
    assert record["attempts"] == "2"
    # The other session's message was answered while the limited one waited.
    assert other_done["reply"] == "echo: OTHER session meanwhile"
    assert float(other_done["finished_at"]) < second
    assert len(replies(r, limited)) == 1


# -- a transient error backs off, then succeeds --------------------------------------------


def test_a_transient_error_backs_off_then_succeeds(
    fleet_factory: Any, llm_server: TimedLLMServer, redis_server: Any
) -> None:
    llm_server.push(error(503, {"error": {"message": "overloaded"}}), when="FLAKY")
    llm_server.reply("fine now", when="FLAKY")
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    r = redis_server.client()
    with fleet.client() as http:
        record = finished(r, "api:flaky", post(http, "FLAKY one", "api:flaky"), timeout=40)

    first, second = llm_server.arrived("FLAKY")
    assert second - first >= 1.5  # backoff 2**1 s
    assert record["status"] == "done" and record["reply"] == "fine now"
    assert record["attempts"] == "2"


# -- the kinds of HTTP errors ----------------------------------------------------------------

KINDS = [
    (400, {"error": {"message": "This model does not support image input",
                     "type": "invalid_request_error"}}, "invalid_request"),
    (400, {"error": {"message": "'messages' must contain the word json",
                     "type": "invalid_request_error", "param": "model"}}, "invalid_request"),
    (400, {"error": {"message": "The model `x` does not exist", "code": "model_not_found"}},
     "unknown_model"),
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "model: claude-x not found"}}, "unknown_model"),
    (404, {"error": {"message": "no route"}}, "unknown_model"),
    (400, {"error": {"message": "Input too big", "code": "context_length_exceeded"}},
     "context_too_long"),
    (413, "<html><h1>413 Request Entity Too Large</h1></html>", "context_too_long"),
    (429, {"error": {"message": "You exceeded your current quota",
                     "type": "insufficient_quota", "code": "insufficient_quota"}}, "auth"),
    (429, {"error": {"message": "slow down", "type": "server_error"}}, "rate_limit"),
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     "transient"),
    (401, {"type": "error", "error": {"type": "authentication_error",
                                      "message": "invalid x-api-key"}}, "auth"),
    (403, {"error": {"message": "forbidden"}}, "auth"),
    (422, {"detail": "unprocessable"}, "invalid_request"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "kind"), KINDS)
def test_error_kinds_come_from_status_and_code_before_text(
    llm_server: TimedLLMServer, status: int, body: Any, kind: str
) -> None:
    config = Config.model_validate(
        {"providers": {"proxy": {"api_base": llm_server.base_url, "models": ["x"]}}}
    )
    provider = build_provider(config)
    assert provider is not None
    llm_server.add_rule("", error(status, body))
    try:
        with pytest.raises(ProviderError) as info:
            provider.chat([{"role": "user", "content": "hi"}], None, "x", 16, 0.0)
    finally:
        provider.close()
    assert info.value.kind == kind, info.value
    assert info.value.retryable is (kind in ("transient", "rate_limit"))


# -- an unexpected error (not the provider's) -------------------------------------------------


def test_an_unexpected_error_is_retried_and_its_traceback_logged_once(
    fleet_factory: Any, llm_server: TimedLLMServer, redis_server: Any
) -> None:
    r = redis_server.client()
    r.set(k.history_key("api:broken"), "not a list")  # every run fails with WRONGTYPE
    fleet = fleet_factory(worker__max_attempts=3)
    fleet.start_ingress()
    fleet.start_worker()
    with fleet.client() as http:
        record = finished(r, "api:broken", post(http, "hello", "api:broken"), timeout=40)

    assert record["status"] == "failed" and record["attempts"] == "3"  # backed off, retried
    assert "WRONGTYPE" in record["reply"] and record["reply"].startswith(FAILED_PREFIX)
    output = fleet.output("w1")
    assert output.count("run raised an unexpected error") == 1, output
    assert output.count("Traceback (most recent call last)") == 1, output
