"""The Feishu adapter end to end: pushes built, encrypted and signed the way Feishu does
(tests/platforms/feishu_api.py) go to the real ingress's /webhooks/feishu/, a real worker
answers with the scripted LLM, and the reply comes back to the loopback open API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.procs import wait_for
from tests.platforms import feishu_api as lark
from tests.platforms.feishu_api import FeishuAPI

USER = "ou_84aad35d084aa403a838cf73ee18467"


@pytest.fixture
def api() -> Iterator[FeishuAPI]:
    server = FeishuAPI().start()
    try:
        yield server
    finally:
        server.stop()


def start_fleet(fleet_factory: Any, api: FeishuAPI, *, encrypt_key: str = "",
                worker: bool = True) -> Any:  # fmt: skip
    fleet = fleet_factory(
        channels__feishu__enabled=True,
        channels__feishu__app_id=lark.APP_ID,
        channels__feishu__app_secret=lark.APP_SECRET,
        channels__feishu__verification_token=lark.VERIFICATION_TOKEN,
        channels__feishu__encrypt_key=encrypt_key,
        channels__feishu__api_base=api.url,
        channels__feishu__dm_policy="allowlist",
        channels__feishu__allow_from=[USER],
    )
    fleet.start_ingress()
    if worker:
        fleet.start_worker()
    check = lark.url_verification("ready")  # answered once the channel has started
    wait_for(lambda: post(fleet, check, encrypt_key=encrypt_key or None).status_code == 200,
             timeout=30, what="the feishu channel to start")  # fmt: skip
    return fleet


def post(fleet: Any, payload: dict[str, Any], *, encrypt_key: str | None = None,
         headers: dict[str, str] | None = None, body: bytes | None = None) -> httpx.Response:  # fmt: skip
    raw, pushed = lark.push(payload, encrypt_key=encrypt_key)
    return httpx.post(f"{fleet.base_url}/webhooks/feishu/", content=body or raw,
                      headers={**pushed, **(headers or {})}, timeout=10)  # fmt: skip


def wait_texts(api: FeishuAPI, expected: list[str]) -> None:
    wait_for(lambda: api.texts() == expected, timeout=60,
             what=f"feishu messages {expected} (have {api.texts()})")  # fmt: skip


def user_texts(llm_server: Any) -> list[str]:
    found = []
    for request in llm_server.requests:
        content = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        found.append(content if isinstance(content, str) else json.dumps(content))
    return found


def test_url_verification_challenge_answered_only_with_the_token(fleet_factory, api):
    fleet = start_fleet(fleet_factory, api, worker=False)
    answer = post(fleet, lark.url_verification("c-8ed6aa67"))
    assert answer.status_code == 200
    assert answer.json() == {"challenge": "c-8ed6aa67"}
    forged = post(fleet, lark.url_verification("c-1", token="not-the-token"))
    assert forged.status_code == 403
    assert "challenge" not in forged.json()
    # Without an encrypt key Feishu signs nothing: the operator is told so.
    assert "feishu pushes are not signed" in fleet.output("ingress")


def test_plain_event_answered_by_a_reply_and_the_token_reused(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    first = lark.message_event("hello feishu")
    assert post(fleet, first).status_code == 200
    wait_texts(api, ["echo: hello feishu"])
    assert post(fleet, lark.message_event("second one")).status_code == 200
    wait_texts(api, ["echo: hello feishu", "echo: second one"])

    replies = api.messages()
    assert [c["kind"] for c in replies] == ["reply", "reply"]  # quoting the user's message
    assert (
        replies[0]["path"]
        == f"/open-apis/im/v1/messages/{first['event']['message']['message_id']}/reply"
    )
    assert api.token_fetches == 1  # one tenant token, reused (bot info and both replies)
    assert {c["token"] for c in api.calls} == {replies[0]["token"]}


def test_encrypted_event_answered_and_forgeries_refused(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api, encrypt_key=lark.ENCRYPT_KEY)
    # Forged: a signature that does not match, a push without one, the wrong token.
    event = lark.message_event("forged hello")
    bad_sig = post(fleet, event, encrypt_key=lark.ENCRYPT_KEY,
                   headers={"X-Lark-Signature": "0" * 64})  # fmt: skip
    assert bad_sig.status_code == 401
    raw, _ = lark.push(event, encrypt_key=lark.ENCRYPT_KEY)
    unsigned = httpx.post(f"{fleet.base_url}/webhooks/feishu/", content=raw,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert unsigned.status_code == 401
    plain = post(fleet, lark.message_event("plain while encrypted"))  # no signature
    assert plain.status_code == 401
    wrong_key = post(fleet, lark.message_event("other key"), encrypt_key="another-key")
    assert wrong_key.status_code == 401
    wrong_token = post(fleet, lark.message_event("bad token", token="nope"),
                       encrypt_key=lark.ENCRYPT_KEY)  # fmt: skip
    assert wrong_token.status_code == 403
    raw, headers = lark.push(event, encrypt_key=lark.ENCRYPT_KEY)
    headers["X-Lark-Signature"] = "é" * 64  # not even ASCII: refused, not a crash
    odd = httpx.post(f"{fleet.base_url}/webhooks/feishu/", content=raw,
                     headers={k: v.encode("latin-1") for k, v in headers.items()})  # fmt: skip
    assert odd.status_code == 401
    malformed = lark.message_event("malformed")
    malformed["event"]["sender"] = "not an object"  # genuine push, broken event: 400
    assert post(fleet, malformed, encrypt_key=lark.ENCRYPT_KEY).status_code == 400

    assert (
        post(fleet, lark.message_event("secret hello"), encrypt_key=lark.ENCRYPT_KEY).status_code
        == 200
    )
    wait_texts(api, ["echo: secret hello"])
    assert len(llm_server.requests) == 1  # none of the forged pushes reached the agent
    assert "secret hello" in user_texts(llm_server)[0]
    assert "feishu pushes are not signed" not in fleet.output("ingress")


@pytest.mark.parametrize("encrypt_key", ["", lark.ENCRYPT_KEY], ids=["plain", "encrypted"])
def test_a_body_nested_too_deep_is_refused_not_a_traceback(fleet_factory, api, encrypt_key):
    # The body is read before anything vouches for it (the token is inside it; a push
    # without X-Lark-Signature may be a url_verification): json.loads recursed once per
    # bracket and raised RecursionError, a 500 with a traceback for anyone who asked.
    fleet = start_fleet(fleet_factory, api, encrypt_key=encrypt_key, worker=False)
    url, json_type = f"{fleet.base_url}/webhooks/feishu/", {"Content-Type": "application/json"}
    for body in (b"[" * 100_000, b'{"encrypt": ' + b"[" * 50_000 + b"}"):
        answer = httpx.post(url, content=body, headers=json_type, timeout=10)
        assert answer.status_code in (400, 401), answer.text
    assert post(fleet, lark.url_verification("still-up"), encrypt_key=encrypt_key or None
                ).json() == {"challenge": "still-up"}  # fmt: skip
    assert "Traceback" not in fleet.output("ingress")
    assert "RecursionError" not in fleet.output("ingress")


def test_duplicated_event_handled_once(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    event = lark.message_event("only once", event_id=uuid.uuid4().hex)
    assert post(fleet, event).status_code == 200
    assert post(fleet, event).status_code == 200  # Feishu's retry of the same event
    # The same event id, a new message id (a retried push carries the same event).
    again = json.loads(json.dumps(event))
    again["event"]["message"]["message_id"] = "om_" + uuid.uuid4().hex
    assert post(fleet, again).status_code == 200
    assert post(fleet, lark.message_event("then this")).status_code == 200
    wait_texts(api, ["echo: only once", "echo: then this"])
    assert len(llm_server.requests) == 2


def test_group_messages_only_when_the_bot_is_mentioned(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    group = "oc_a0553eda9014c201e6969b478895c230"
    other = lark.bot_mention("@_user_1", open_id="ou_someone_else_000000000000000")
    ignored = lark.message_event("@_user_1 not for the bot", chat_id=group, chat_type="group",
                                 mentions=[other])  # fmt: skip
    assert post(fleet, ignored).status_code == 200
    mentioned = lark.message_event("@_user_1 what time is it", chat_id=group, chat_type="group",
                                   mentions=[lark.bot_mention()])  # fmt: skip
    api.withdrawn.add(mentioned["event"]["message"]["message_id"])  # the reply is refused
    assert post(fleet, mentioned).status_code == 200
    wait_texts(api, ["echo: what time is it"])  # the bot's @ placeholder cut out
    sent = api.messages()[0]
    assert sent["kind"] == "send"  # the withdrawn message: sent to the chat instead
    assert sent["query"] == {"receive_id_type": ["chat_id"]}
    assert sent["body"]["receive_id"] == group
    assert len(llm_server.requests) == 1

    # Ten people mentioned: the bot's key @_user_1 is the start of @_user_10, whose name
    # must still show (cutting @_user_1 everywhere left "ask 0 about it").
    people = [lark.bot_mention(f"@_user_{n}", open_id=f"ou_person_{n:02d}") for n in range(2, 11)]
    people[-1]["name"] = "Dora"
    busy = lark.message_event("@_user_1 ask @_user_10 about it", chat_id=group,
                              chat_type="group", mentions=[lark.bot_mention(), *people])  # fmt: skip
    assert post(fleet, busy).status_code == 200
    wait_texts(api, ["echo: what time is it", "echo: ask @Dora about it"])


def test_token_refreshed_when_expired_and_rate_limit_retried(fleet_factory, api, llm_server):
    fleet = start_fleet(fleet_factory, api)
    assert post(fleet, lark.message_event("one")).status_code == 200
    wait_texts(api, ["echo: one"])
    assert api.token_fetches == 1

    api.expire_tokens()  # Feishu now calls the cached token invalid (99991663)
    assert post(fleet, lark.message_event("two")).status_code == 200
    wait_texts(api, ["echo: one", "echo: two"])
    assert api.token_fetches == 2
    refused = [c for c in api.calls if c["code"] == 99991663]
    assert len(refused) == 1 and refused[0]["token"] != api.messages()[-1]["token"]

    api.rate_limit(1, reset_sec=1)  # the next message call gets 429 / 99991400
    assert post(fleet, lark.message_event("three")).status_code == 200
    wait_texts(api, ["echo: one", "echo: two", "echo: three"])
    limited = [c for c in api.calls if c["code"] == 99991400]
    assert len(limited) == 1 and limited[0]["status"] == 429
    assert api.token_fetches == 2
    assert len(llm_server.requests) == 3
