"""The QQ channel end to end: the real ingress and worker, the scripted LLM, and a loopback
QQ open platform (tests/platforms/qq_api.py) that signs its callbacks with Ed25519 as QQ does
and takes passive replies on the C2C and group endpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from claw_ingress.channels.qq import sign, signature_ok
from tests.fixtures.procs import wait_for
from tests.platforms.qq_api import (
    APP_ID,
    QQAPI,
    SECRET,
    bot_key,
    c2c_message,
    group_at_message,
    public_key,
    signed,
    validation,
)

USER = "E4F4AEA33253A2797FB897C50B81D7ED"
GROUP = "C9F778FE6ADF9D1D1DBE395BF744A33A"
MEMBER = "2B3C4D5E6F708192A3B4C5D6E7F80912"
WEBHOOK = "/webhooks/qq/"


@pytest.fixture
def qq() -> Iterator[QQAPI]:
    api = QQAPI().start()
    yield api
    api.stop()


@pytest.fixture
def fleet(fleet_factory, qq: QQAPI) -> Any:
    fleet = fleet_factory(
        channels__qq={
            "enabled": True,
            "app_id": APP_ID,
            "secret": SECRET,
            "api_base": qq.url,
            "token_url": qq.token_url,
            "dm_policy": "allowlist",
            "allow_from": [USER, MEMBER],
            "rate_per_sec": 50.0,
        }
    )
    fleet.start_ingress()
    wait_for(lambda: post(fleet, {"op": 12}).status_code == 200, timeout=30, what="the webhook")
    fleet.start_worker()
    return fleet


def post(fleet: Any, payload: dict[str, Any], **signing: Any) -> httpx.Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return httpx.post(fleet.base_url + WEBHOOK, content=body, headers=signed(body, **signing))


def test_the_signing_key_matches_qqs_documented_examples() -> None:
    # bot-docs "event-emit": the validation answer for secret DG5g3B4j9X2KOErG.
    assert sign("DG5g3B4j9X2KOErG", b"1725442341Arq0D5A61EgUu4OxUvOp") == (
        "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
        "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706"
    )
    # botgo's signature test: a C2C event body signed with secret 123456abcdef.
    body = (
        '{"id":"ROBOT1.0_veoihSEXDc8Q.g-6eLpNIa11bH8MisOjn-m-LKxCPntMk6exUXgcWCGpVO7L2QKTNZzjZ'
        'zFFDSbiOFcqAPWyVA!!","content":"哦一下","timestamp":"2024-10-15T16:33:15+08:00",'
        '"author":{"id":"675860273","user_openid":"675860273"}}'
    ).encode()
    signature = (
        "e949b5b94ef4103df903fb031d1d16e358db3db83e79e117edd404c8508be3ce"
        "8a76d7bad1bed353194c126a1a5915b4ad8b5288c1191cc53a12acffccd82004"
    )
    assert signature_ok("123456abcdef", "1728981195", body, signature)
    assert not signature_ok("123456abcdef", "1728981196", body, signature)
    assert bot_key("123456abcdef").sign(b"1728981195" + body).hex() == signature


def test_validation_is_answered_with_the_bots_signature(fleet) -> None:
    event_ts = str(int(time.time()))
    resp = post(fleet, validation("Arq0D5A61EgUu4OxUvOp", event_ts))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["plain_token"] == "Arq0D5A61EgUu4OxUvOp"
    public_key().verify(
        bytes.fromhex(answer["signature"]), (event_ts + "Arq0D5A61EgUu4OxUvOp").encode()
    )
    # An unsigned validation request is not answered: the bot signs nothing for strangers.
    body = json.dumps(validation("attacker-chosen", event_ts)).encode()
    resp = httpx.post(
        fleet.base_url + WEBHOOK, content=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 401


def test_c2c_and_group_messages_get_passive_replies_with_one_token(
    fleet, qq: QQAPI, llm_server
) -> None:
    event = c2c_message(USER, "hello qq")
    resp = post(fleet, event)
    assert resp.status_code == 200 and resp.json() == {"op": 12, "d": 0}
    path = f"/v2/users/{USER}/messages"
    sent = wait_for(lambda: qq.delivered(path), timeout=60, what="the C2C reply")[0]
    assert "echo:" in sent["body"]["content"] and "hello qq" in sent["body"]["content"]
    assert sent["body"]["msg_type"] == 0 and sent["body"]["msg_id"] == event["d"]["id"]
    assert sent["body"]["msg_seq"] == 1

    # A long answer goes out in parts, each a reply to the user's message with its own seq.
    llm_server.reply("x" * 2500, when="long please")
    event = c2c_message(USER, "long please")
    assert post(fleet, event).status_code == 200
    parts = wait_for(
        lambda: len(qq.delivered(path)) >= 3 and qq.delivered(path)[1:],
        timeout=60,
        what="both parts",
    )
    assert [p["body"]["msg_id"] for p in parts] == [event["d"]["id"]] * 2
    assert [p["body"]["msg_seq"] for p in parts] == [1, 2]
    assert "".join(p["body"]["content"] for p in parts) == "x" * 2500

    event = group_at_message(GROUP, MEMBER, "hello group")
    assert post(fleet, event).status_code == 200
    path = f"/v2/groups/{GROUP}/messages"
    sent = wait_for(lambda: qq.delivered(path), timeout=60, what="the group reply")[0]
    assert "hello group" in sent["body"]["content"] and sent["body"]["msg_id"] == event["d"]["id"]
    assert qq.token_fetches == 1  # fetched when the channel started, reused since
    tokens = {s["token"] for s in qq.sends}
    assert len(tokens) == 1
    logs = fleet.output("ingress")
    assert SECRET not in logs and tokens.pop() not in logs


def test_a_refused_strangers_message_is_not_what_later_parts_answer(
    fleet, qq: QQAPI, llm_server
) -> None:
    """QQ's passive replies name a message: the second part of a long answer names the
    chat's latest one. A stranger (not in allow_from) writing in the group meanwhile is
    refused, and must not become the message the member's answer quotes."""
    llm_server.reply("y" * 2500, when="long for the group", delay=2)
    asked = group_at_message(GROUP, MEMBER, "long for the group")
    assert post(fleet, asked).status_code == 200
    wait_for(lambda: llm_server.requests_for("long for the group"), timeout=60,
             what="the member's run at the LLM")  # fmt: skip
    stranger = group_at_message(GROUP, "0" * 32, "me too")
    assert post(fleet, stranger).status_code == 200
    path = f"/v2/groups/{GROUP}/messages"
    parts = wait_for(lambda: len(qq.delivered(path)) >= 2 and qq.delivered(path), timeout=60,
                     what="both parts")  # fmt: skip
    assert [p["body"]["msg_id"] for p in parts] == [asked["d"]["id"]] * 2, parts
    assert "".join(p["body"]["content"] for p in parts) == "y" * 2500
    assert not llm_server.requests_for("me too")


def test_forged_or_stale_callbacks_get_401_and_never_reach_the_agent(
    fleet, qq: QQAPI, llm_server
) -> None:
    assert (
        post(fleet, c2c_message(USER, "forged one"), secret="someone-elses-secret").status_code
        == 401
    )
    stale = int(time.time()) - 600
    assert post(fleet, c2c_message(USER, "replayed one"), timestamp=stale).status_code == 401
    future = int(time.time()) + 600
    assert post(fleet, c2c_message(USER, "future one"), timestamp=future).status_code == 401
    body = json.dumps(c2c_message(USER, "tampered one")).encode()
    headers = signed(body)
    resp = httpx.post(
        fleet.base_url + WEBHOOK, content=body.replace(b"tampered", b"TAMPERED"), headers=headers
    )
    assert resp.status_code == 401
    resp = httpx.post(
        fleet.base_url + WEBHOOK, content=body, headers={**headers, "X-Bot-Appid": "99999999"}
    )
    assert resp.status_code == 401
    # A genuine message afterwards is the only one the agent sees.
    assert post(fleet, c2c_message(USER, "genuine one")).status_code == 200
    wait_for(lambda: qq.delivered(), timeout=60, what="the reply")
    for marker in ("forged", "replayed", "future", "tampered", "TAMPERED"):
        assert llm_server.requests_for(marker) == []
    assert len(qq.delivered()) == 1


def test_a_refused_secret_keeps_the_channel_down_saying_why(fleet_factory, qq: QQAPI) -> None:
    fleet = fleet_factory(channels__qq={
        "enabled": True, "app_id": APP_ID, "secret": "not-the-secret-0000",
        "api_base": qq.url, "token_url": qq.token_url,
    })  # fmt: skip
    fleet.start_ingress()
    wait_for(lambda: "QQ refused app_id/secret" in fleet.output("ingress"), timeout=30,
             what="the reason in the log")  # fmt: skip
    assert post(fleet, c2c_message(USER, "anyone?")).status_code == 503
    assert "not-the-secret-0000" not in fleet.output("ingress")


def test_a_timestamp_of_other_digits_is_refused_not_a_server_error(fleet) -> None:
    """Header values are Latin-1: '²' and '³' are digits to str.isdigit but not to int(),
    so an unsigned callback stamped '²' got a 500 with a traceback instead of a 401."""
    body = json.dumps(c2c_message(USER, "superscript")).encode()
    for stamp in (b"\xb2", b"1\xb3", b"\xb9" * 10):
        headers = {**signed(body), "X-Signature-Timestamp": stamp}
        resp = httpx.post(fleet.base_url + WEBHOOK, content=body, headers=headers)
        assert resp.status_code == 401, (stamp, resp.status_code, resp.text)
