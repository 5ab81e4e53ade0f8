"""The DingTalk adapter end to end: robot callbacks signed the way DingTalk does
(tests/platforms/dingtalk_api.py) go to the real ingress's /webhooks/dingtalk/, a real worker
answers with the scripted LLM, and the reply goes back through the sessionWebhook or the
loopback open API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.procs import wait_for
from tests.platforms import dingtalk_api as ding
from tests.platforms.dingtalk_api import DingTalkAPI

STAFF = "manager4220"
GROUP = "cidGr0upXq8V1m2PZjLAJgA=="


@pytest.fixture
def api() -> Iterator[DingTalkAPI]:
    server = DingTalkAPI().start()
    try:
        yield server
    finally:
        server.stop()


def start_fleet(fleet_factory: Any, api: DingTalkAPI) -> Any:
    fleet = fleet_factory(
        channels__dingtalk__enabled=True,
        channels__dingtalk__client_id=ding.CLIENT_ID,
        channels__dingtalk__client_secret=ding.CLIENT_SECRET,
        channels__dingtalk__api_base=api.url,
        channels__dingtalk__session_webhook_base=f"{api.url}/robot/",
        channels__dingtalk__dm_policy="allowlist",
        channels__dingtalk__allow_from=[STAFF],
    )
    fleet.start_ingress()
    fleet.start_worker()
    # A signed callback with nothing in it: 200 once the channel has started (503 before).
    wait_for(lambda: post(fleet, {}).status_code == 200, timeout=30,
             what="the dingtalk channel to start")  # fmt: skip
    return fleet


def post(fleet: Any, body: dict[str, Any], **signing: Any) -> httpx.Response:
    raw, headers = ding.callback(body, **signing)
    return httpx.post(f"{fleet.base_url}/webhooks/dingtalk/", content=raw, headers=headers,
                      timeout=10)  # fmt: skip


def wait_texts(api: DingTalkAPI, expected: list[str]) -> None:
    wait_for(lambda: api.texts() == expected, timeout=60,
             what=f"dingtalk messages {expected} (have {api.texts()})")  # fmt: skip


def test_signed_callback_answered_through_the_session_webhook(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    webhook = api.session_webhook()
    answer = post(fleet, ding.robot_message("hello dingtalk", session_webhook=webhook))
    assert answer.status_code == 200
    wait_texts(api, ["echo: hello dingtalk"])
    sent = api.sent()[0]
    assert sent["kind"] == "session"
    assert sent["to"] == webhook.rsplit("=", 1)[1]
    assert sent["body"] == {"msgtype": "text", "text": {"content": "echo: hello dingtalk"}}
    assert not [c for c in api.calls if c["kind"] in ("single", "group")]


def test_a_long_reply_of_emoji_is_split_by_utf8_bytes(fleet_factory, api, llm_server):
    """DingTalk counts a text's 20,000 bytes, not characters: 6,000 emoji (4 bytes each) in
    one part were refused before, on the session webhook and the open API alike."""
    fleet = start_fleet(fleet_factory, api)
    question = "\U0001f600" * 6000
    answer = post(fleet, ding.robot_message(question, session_webhook=api.session_webhook()))
    assert answer.status_code == 200
    wait_for(lambda: "".join(api.texts()) == "echo: " + question, timeout=60,
             what="the whole reply in parts")  # fmt: skip
    assert len(api.texts()) == 2
    assert all(len(part.encode()) <= ding.MAX_TEXT_BYTES for part in api.texts())
    assert [c for c in api.calls if c["kind"] == "session"] == api.sent()  # none refused


def test_expired_session_webhook_falls_back_to_the_open_api(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    expired = int(time.time() * 1000) - 1000
    message = ding.robot_message("after expiry", session_webhook=api.session_webhook(),
                                 webhook_expires_ms=expired)  # fmt: skip
    assert post(fleet, message).status_code == 200
    wait_texts(api, ["echo: after expiry"])
    single = api.sent()[0]
    assert single["kind"] == "single" and single["to"] == [STAFF]
    assert single["body"]["robotCode"] == ding.CLIENT_ID
    assert api.token_fetches == 1  # the token fetched at start is the one used
    assert single["token"]

    # A group @-mention whose sessionWebhook is not DingTalk's host: never used.
    foreign = "http://127.0.0.1:9/robot/sendBySession?session=stolen"
    group = ding.robot_message("in the group", session_webhook=foreign, conversation_id=GROUP,
                               conversation_type="2")  # fmt: skip
    assert post(fleet, group).status_code == 200
    wait_texts(api, ["echo: after expiry", "echo: in the group"])
    assert api.sent()[1]["kind"] == "group" and api.sent()[1]["to"] == GROUP

    # The token expires (401 InvalidAuthentication: fetched again); a throttled call
    # (403 QpsLimit...) is retried.
    api.expire_tokens()
    api.throttle(1)
    late = ding.robot_message("later", session_webhook=api.session_webhook(),
                              webhook_expires_ms=expired)  # fmt: skip
    assert post(fleet, late).status_code == 200
    wait_texts(api, ["echo: after expiry", "echo: in the group", "echo: later"])
    assert api.token_fetches == 2
    statuses = [c["status"] for c in api.calls if c["kind"] == "single"]
    assert statuses == [200, 401, 403, 200]
    assert len(llm_server.requests) == 3


def test_forged_and_replayed_callbacks_refused(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    webhook = api.session_webhook()
    forged = post(fleet, ding.robot_message("forged", session_webhook=webhook),
                  secret="not-the-app-secret")  # fmt: skip
    assert forged.status_code == 401
    two_hours = 2 * 3600 * 1000
    old = int(time.time() * 1000) - two_hours  # correctly signed, but replayed late
    assert post(fleet, ding.robot_message("replayed", session_webhook=webhook),
                timestamp_ms=old).status_code == 401  # fmt: skip
    future = int(time.time() * 1000) + two_hours
    assert post(fleet, ding.robot_message("future", session_webhook=webhook),
                timestamp_ms=future).status_code == 401  # fmt: skip
    unsigned = httpx.post(f"{fleet.base_url}/webhooks/dingtalk/", json={"msgId": "x"})
    assert unsigned.status_code == 401
    raw, headers = ding.callback(ding.robot_message("odd", session_webhook=webhook))
    headers["sign"] = "é" * 44  # not even ASCII: refused, not a crash
    odd = httpx.post(f"{fleet.base_url}/webhooks/dingtalk/", content=raw,
                     headers={k: v.encode("latin-1") for k, v in headers.items()})  # fmt: skip
    assert odd.status_code == 401

    assert post(fleet, ding.robot_message("genuine", session_webhook=webhook)).status_code == 200
    wait_texts(api, ["echo: genuine"])
    assert len(llm_server.requests) == 1  # nothing refused reached the agent


def test_group_needs_an_at_mention_and_a_message_is_handled_once(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    webhook = api.session_webhook()
    chatter = ding.robot_message("not for the bot", session_webhook=webhook, conversation_id=GROUP,
                                 conversation_type="2", in_at_list=False)  # fmt: skip
    assert post(fleet, chatter).status_code == 200
    once = ding.robot_message("only once", session_webhook=webhook, conversation_id=GROUP,
                              conversation_type="2")  # fmt: skip
    assert post(fleet, once).status_code == 200
    assert post(fleet, once).status_code == 200  # the same msgId again (a replay)
    then = ding.robot_message("then this", session_webhook=webhook, conversation_id=GROUP,
                              conversation_type="2")  # fmt: skip
    assert post(fleet, then).status_code == 200
    wait_texts(api, ["echo: only once", "echo: then this"])
    assert len(llm_server.requests) == 2
    assert {c["kind"] for c in api.sent()} == {"session"}


def test_a_captured_sign_with_a_body_nested_too_deep_is_refused_not_a_traceback(fleet_factory, api):
    # The sign covers the timestamp only: whoever saw one request may send any body with
    # it for an hour. One nested 100,000 deep made json.loads raise RecursionError: a 500
    # and a traceback.
    fleet = start_fleet(fleet_factory, api)
    _, headers = ding.callback({})
    answer = httpx.post(f"{fleet.base_url}/webhooks/dingtalk/", content=b"[" * 100_000,
                        headers=headers, timeout=10)  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert post(fleet, {}).status_code == 200
    assert "RecursionError" not in fleet.output("ingress")
