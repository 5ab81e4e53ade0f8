"""The WhatsApp channel end to end: the real ingress and worker, the scripted LLM, and a
loopback WhatsApp (tests/platforms/whatsapp_api.py): Meta's Graph API and signed webhook
notifications in cloud mode, nanobot's WebSocket bridge protocol in bridge mode."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from claw_ingress.channels._whatsapp_bridge import bridge_message
from claw_worker.config.channels import WhatsAppConfig
from tests.fixtures.procs import free_port, wait_for
from tests.platforms.whatsapp_api import (
    ACCESS_TOKEN,
    APP_SECRET,
    BRIDGE_TOKEN,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    FakeBridge,
    GraphAPI,
    delivered_status,
    new_wamid,
    notification,
    signed,
    text_message,
)

USER = "16315551181"
WEBHOOK = "/webhooks/whatsapp/"


@pytest.fixture
def graph() -> Iterator[GraphAPI]:
    api = GraphAPI().start()
    yield api
    api.stop()


@pytest.fixture
def cloud_fleet(fleet_factory, graph: GraphAPI) -> Any:
    fleet = fleet_factory(
        channels__whatsapp={
            "enabled": True,
            "mode": "cloud",
            "api_base": graph.api_base,
            "access_token": ACCESS_TOKEN,
            "phone_number_id": PHONE_NUMBER_ID,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
            "dm_policy": "allowlist",
            "allow_from": [USER],
            "rate_per_sec": 50.0,
        }
    )
    fleet.start_ingress()
    with fleet.client() as http:  # the adapter is up once its webhook answers
        wait_for(lambda: http.get(WEBHOOK).status_code == 403, timeout=30, what="webhook")
    fleet.start_worker()
    return fleet


def post(fleet: Any, payload: dict[str, Any], *, secret: str = APP_SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(fleet.base_url + WEBHOOK, content=body, headers=signed(body, secret))


def test_verification_echoes_the_challenge_for_the_right_token_only(cloud_fleet) -> None:
    url = cloud_fleet.base_url + WEBHOOK
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    resp = httpx.get(url, params=query)
    assert resp.status_code == 200 and resp.text == "1158201444"
    assert resp.headers["content-type"].startswith("text/plain")
    assert httpx.get(url, params={**query, "hub.verify_token": "guess"}).status_code == 403
    assert httpx.get(url, params={**query, "hub.mode": "unsubscribe"}).status_code == 403
    assert httpx.get(url).status_code == 403


def test_a_signed_message_is_answered_through_the_graph_api_quoting_it(
    cloud_fleet, graph: GraphAPI, llm_server
) -> None:
    wamid = new_wamid()
    payload = notification(
        messages=[text_message(USER, "hello whatsapp", wamid=wamid)], names={USER: "Kerry Fisher"}
    )
    assert post(cloud_fleet, payload).status_code == 200
    assert post(cloud_fleet, payload).status_code == 200  # Meta delivering it again
    sent = wait_for(lambda: graph.delivered(USER), timeout=60, what="the reply")
    assert sent[0]["messaging_product"] == "whatsapp" and sent[0]["type"] == "text"
    assert "echo:" in sent[0]["text"]["body"] and "hello whatsapp" in sent[0]["text"]["body"]
    assert sent[0]["context"] == {"message_id": wamid}
    # The redelivered notification was stored once: the next message's answer comes second.
    assert (
        post(cloud_fleet, notification(messages=[text_message(USER, "second one")])).status_code
        == 200
    )
    sent = wait_for(
        lambda: len(graph.delivered(USER)) >= 2 and graph.delivered(USER),
        timeout=60,
        what="the second reply",
    )
    assert [("second one" in s["text"]["body"]) for s in sent] == [False, True]
    assert len(llm_server.requests_for("hello whatsapp")) == 1
    logs = cloud_fleet.output("ingress")
    assert not [s for s in (ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN) if s in logs]


def test_forged_signatures_and_status_updates_never_reach_the_agent(
    cloud_fleet, graph: GraphAPI, llm_server
) -> None:
    forged = notification(messages=[text_message(USER, "forged order")])
    assert post(cloud_fleet, forged, secret="not-the-app-secret").status_code == 401
    body = json.dumps(forged).encode()
    resp = httpx.post(
        cloud_fleet.base_url + WEBHOOK, content=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 401
    tampered = signed(body)  # signed, then the body changed on the way
    resp = httpx.post(
        cloud_fleet.base_url + WEBHOOK, content=body.replace(b"forged", b"FORGED"), headers=tampered
    )
    assert resp.status_code == 401
    assert post(cloud_fleet, notification(statuses=[delivered_status(USER)])).status_code == 200
    # A genuine message after all that is the only one the agent sees.
    assert (
        post(cloud_fleet, notification(messages=[text_message(USER, "real one")])).status_code
        == 200
    )
    wait_for(lambda: graph.delivered(USER), timeout=60, what="the reply")
    assert llm_server.requests_for("forged") == [] and llm_server.requests_for("FORGED") == []
    assert len(graph.delivered()) == 1


def test_rate_limits_are_retried_and_a_closed_window_is_given_up(
    cloud_fleet, graph: GraphAPI
) -> None:
    graph.fail_next(429, 130429, retry_after="1")  # throughput: HTTP 429 with a hint
    graph.fail_next(400, 131056)  # pair rate, as a Graph error code
    assert (
        post(cloud_fleet, notification(messages=[text_message(USER, "busy hour")])).status_code
        == 200
    )
    sent = wait_for(lambda: graph.delivered(USER), timeout=60, what="the retried reply")
    assert "busy hour" in sent[0]["text"]["body"]
    assert [s["code"] for s in graph.sends] == [130429, 131056, None]
    # Outside the 24-hour window: refused for good, tried once, the next reply still goes.
    graph.fail_next(400, 131047)
    assert (
        post(cloud_fleet, notification(messages=[text_message(USER, "too late")])).status_code
        == 200
    )
    assert (
        post(cloud_fleet, notification(messages=[text_message(USER, "after that")])).status_code
        == 200
    )
    wait_for(
        lambda: len(graph.delivered(USER)) >= 2, timeout=60, what="the reply after the refusal"
    )
    assert [s["code"] for s in graph.sends][3:] == [131047, None]
    assert "after that" in graph.delivered(USER)[1]["text"]["body"]


@pytest.fixture
def bridge() -> Iterator[FakeBridge]:
    fake = FakeBridge(free_port()).start()
    yield fake
    fake.stop()


def test_bridge_messages_are_answered_over_the_bridge_across_a_restart(
    fleet_factory, bridge: FakeBridge
) -> None:
    fleet = fleet_factory(
        channels__whatsapp={
            "enabled": True,
            "mode": "bridge",
            "bridge_url": bridge.url,
            "bridge_token": BRIDGE_TOKEN,
            "dm_policy": "open",
            "rate_per_sec": 50.0,
        }
    )
    fleet.start_ingress()
    fleet.start_worker()
    wait_for(lambda: bridge.clients == 1, timeout=30, what="the adapter to connect")
    chat = "16315551181@s.whatsapp.net"
    bridge.push_message(chat, "hi over the bridge")
    reply = wait_for(lambda: bridge.sends(chat), timeout=60, what="the reply frame")[0]
    assert reply["type"] == "send" and "hi over the bridge" in reply["text"]
    # The bridge restarts; the adapter connects again and the conversation goes on.
    bridge.stop()
    bridge.start()
    wait_for(
        lambda: bridge.connections == 2 and bridge.clients == 1,
        timeout=30,
        what="the adapter to reconnect",
    )
    bridge.push_message(chat, "still there?")
    replies = wait_for(
        lambda: len(bridge.sends(chat)) >= 2 and bridge.sends(chat),
        timeout=60,
        what="the reply after the restart",
    )
    assert "still there?" in replies[1]["text"]
    assert "whatsapp bridge connection closed; reconnecting" in fleet.output("ingress")


def test_bridge_frames_of_nanobot_and_clawgo_read_alike() -> None:
    nanobot = bridge_message(
        {
            "type": "message",
            "id": "3EB0C7",
            "sender": "1203630@g.us",
            "pn": "",
            "participant": "16315551181@s.whatsapp.net",
            "content": "hi",
            "timestamp": 1,
            "isGroup": True,
        }
    )
    clawgo = bridge_message(
        {
            "type": "message",
            "id": "3EB0C7",
            "from": "16315551181@s.whatsapp.net",
            "chat": "1203630@g.us",
            "from_name": "Kerry",
            "content": "hi",
        }
    )
    for message in (nanobot, clawgo):
        assert message is not None
        assert (message.chat_id, message.sender_id) == ("1203630@g.us", "16315551181")
        assert message.metadata["platform_message_id"] == "3EB0C7"
        assert message.message_id == "whatsapp:3EB0C7"
    assert clawgo is not None and clawgo.metadata["sender_name"] == "Kerry"
    assert bridge_message({"type": "message", "sender": "x@s.whatsapp.net", "content": ""}) is None


def test_a_refused_access_token_keeps_the_channel_down_saying_why(
    fleet_factory, graph: GraphAPI
) -> None:
    fleet = fleet_factory(channels__whatsapp={
        "enabled": True, "api_base": graph.api_base, "access_token": "EAAG-revoked",
        "phone_number_id": PHONE_NUMBER_ID, "app_secret": APP_SECRET,
        "verify_token": VERIFY_TOKEN,
    })  # fmt: skip
    fleet.start_ingress()
    wait_for(lambda: "refused channels.whatsapp.access_token" in fleet.output("ingress"),
             timeout=30, what="the reason in the log")  # fmt: skip
    assert httpx.get(fleet.base_url + WEBHOOK).status_code == 503
    assert "EAAG-revoked" not in fleet.output("ingress")


def test_a_section_naming_only_a_bridge_is_bridge_mode() -> None:
    nanobot_style = WhatsAppConfig.model_validate({"enabled": True, "bridge_url": "ws://h:3001"})
    assert nanobot_style.mode == "bridge" and nanobot_style.missing() == []
    cloud = WhatsAppConfig.model_validate({"enabled": True, "access_token": "t"})
    assert cloud.mode == "cloud"
    assert cloud.missing() == ["phone_number_id", "app_secret", "verify_token"]
    explicit = WhatsAppConfig.model_validate({"mode": "cloud", "bridge_url": "ws://h:3001"})
    assert explicit.mode == "cloud"


def test_a_malformed_message_in_a_notification_does_not_lose_the_others(
    cloud_fleet, graph: GraphAPI, llm_server
) -> None:
    """Meta batches messages (and statuses) in one notification. One of the wrong shape (a
    number where text belongs, a null where an object belongs) answered the whole
    notification with a 400 or a 500: the good messages beside it were never stored, and
    Meta sent the same failing batch again for days."""
    number_text = text_message(USER, "x")
    number_text["text"] = {"body": 12345}
    null_context = text_message(USER, "quoting nothing")
    null_context["context"] = None
    good = text_message(USER, "the good one")
    payload = notification(messages=[number_text, null_context, good])
    value = payload["entry"][0]["changes"][0]["value"]
    value["contacts"].append({"wa_id": "16315550000", "profile": None})
    value["statuses"] = [{"id": new_wamid(), "status": "failed", "errors": None}]
    assert post(cloud_fleet, payload).status_code == 200
    sent = wait_for(lambda: len(found := graph.delivered(USER)) >= 2 and found, timeout=60,
                    what="the replies")  # fmt: skip
    assert [s["text"]["body"] for s in sent] == ["echo: quoting nothing", "echo: the good one"]
    skipped = [line for line in cloud_fleet.output("ingress").splitlines()
               if "whatsapp message skipped" in line]  # fmt: skip
    assert len(skipped) == 1, skipped  # the number where text belongs


def test_a_bridge_message_arriving_while_redis_is_away_is_stored_once_it_is_back(
    fleet_factory, bridge: FakeBridge, redis_server
) -> None:
    """The bridge sends a message once and never again: one that could not be stored
    (Redis restarting) was logged as a failed frame and lost for good."""
    fleet = fleet_factory(channels__whatsapp={"enabled": True, "mode": "bridge",
                                              "bridge_url": bridge.url,
                                              "bridge_token": BRIDGE_TOKEN, "dm_policy": "open",
                                              "rate_per_sec": 50.0})  # fmt: skip
    fleet.start_ingress()
    fleet.start_worker()
    wait_for(lambda: bridge.clients == 1, timeout=30, what="the adapter to connect")
    chat = "16315551181@s.whatsapp.net"
    redis_server.stop()
    bridge.push_message(chat, "while redis was away")
    bridge.push_message(chat, "and a second one")
    wait_for(lambda: "whatsapp bridge message not stored" in fleet.output("ingress"),
             timeout=15, what="the store to fail")  # fmt: skip
    redis_server.start()
    sent = wait_for(lambda: len(found := bridge.sends(chat)) >= 2 and found, timeout=90,
                    what="both replies")  # fmt: skip
    assert [s["text"] for s in sent] == ["echo: while redis was away", "echo: and a second one"]


@pytest.mark.parametrize("hint", ["nan", "NaN"])
def test_a_retry_after_that_is_no_number_of_seconds_is_waited_as_the_default(
    cloud_fleet, graph: GraphAPI, hint: str
) -> None:
    """``Retry-After: nan`` was read as float NaN, which broke the retry (ValueError): the
    reply was left for the claim a minute later. It is the default wait (2 s) now."""
    graph.fail_next(429, 130429, retry_after=hint)
    graph.fail_next(429, 130429, retry_after=hint)
    assert post(cloud_fleet, notification(messages=[text_message(USER, "slow")])).status_code == 200
    wait_for(lambda: graph.delivered(USER), timeout=60, what="the retried reply")
    times = [s["at"] for s in graph.sends]
    assert len(times) == 3
    assert all(later - earlier >= 1.9 for earlier, later in itertools.pairwise(times)), times
