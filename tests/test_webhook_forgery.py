"""Forged and replayed webhooks, per channel, against the real ingress over real HTTP.

Each channel's push is built and signed the way its platform does (tests/platforms/), then
forged (a wrong secret, no signature, a body the signature does not cover) and replayed (the
same signed request twice; a captured request with an old timestamp). A forged push gets a
4xx and stores nothing; a replay is refused or stored once. What reached the fleet is read
from the session mailboxes in Redis (no worker runs, so nothing is taken out of them).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.campaign import record
from tests.fixtures.fleet import fleet_config
from tests.fixtures.procs import wait_for
from tests.platforms import dingtalk_api as ding
from tests.platforms import feishu_api as lark
from tests.platforms import qq_api
from tests.platforms import whatsapp_api as meta
from tests.platforms.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.platforms.telegram_api import TelegramAPI

TELEGRAM_SECRET = "hook-secret_0123456789"
TELEGRAM_USER = 4242
FEISHU_USER = "ou_84aad35d084aa403a838cf73ee18467"
DING_STAFF = "manager4220"
WA_USER = "16315551181"
QQ_USER = "E4F4AEA33253A2797FB897C50B81D7ED"
HOUR = 3600


@dataclass
class Tally:
    """One area's figures: requests tried, refused (4xx, or a replay not stored again),
    answered with a 5xx."""

    tried: int = 0
    rejected: int = 0
    server_errors: int = 0

    def refused(self, response: httpx.Response) -> bool:
        """Count a forged request; True when it was refused with a 4xx."""
        self.tried += 1
        if response.status_code >= 500:
            self.server_errors += 1
        ok = 400 <= response.status_code < 500
        self.rejected += ok
        return ok

    def answered(self, response: httpx.Response) -> None:
        """Count a replayed request (judged later by what was stored)."""
        self.tried += 1
        self.server_errors += response.status_code >= 500

    def settle(self, fleet: Any, marker: str, old_marker: str, *, again: int) -> int:
        """After ``again`` replays of the message carrying ``marker``: it is stored once, the
        stale one (``old_marker``) never. Returns the escapes."""
        stored = copies(fleet.redis.url, marker)
        assert stored == 1
        self.rejected += again - (stored - 1)
        return stored - 1 + copies(fleet.redis.url, old_marker)


def stored_texts(redis_url: str) -> list[str]:
    """The text of every message waiting in any session mailbox."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        texts = []
        for key in client.scan_iter("claw:mbox:*"):
            texts += [json.loads(raw)["text"] for raw in client.lrange(key, 0, -1)]
        return texts
    finally:
        client.close()


def copies(redis_url: str, marker: str) -> int:
    return sum(marker in text for text in stored_texts(redis_url))


def no_traceback(fleet: Any) -> None:
    assert "Traceback" not in fleet.output("ingress")


def finish(channel: str, forged: Tally, replayed: Tally, fleet: Any, *, forged_markers: list[str],
           replay_escapes: int) -> None:  # fmt: skip
    """Record both areas, then assert: nothing forged stored, no replay stored twice."""
    forged_escapes = sum(copies(fleet.redis.url, m) for m in forged_markers)
    record(f"webhook: {channel} forged", tried=forged.tried, rejected=forged.rejected,
           escapes=forged_escapes, server_errors=forged.server_errors)  # fmt: skip
    record(f"webhook: {channel} replayed", tried=replayed.tried, rejected=replayed.rejected,
           escapes=replay_escapes, server_errors=replayed.server_errors)  # fmt: skip
    assert forged_escapes == 0 and replay_escapes == 0
    assert forged.server_errors == 0 and replayed.server_errors == 0
    assert forged.rejected == forged.tried and replayed.rejected == replayed.tried
    no_traceback(fleet)


# -- Telegram: the secret token header ---------------------------------------------------------


@pytest.fixture
def telegram_api() -> Iterator[TelegramAPI]:
    server = TelegramAPI().start()
    try:
        yield server
    finally:
        server.stop()


def telegram_update(update_id: int, message_id: int, text: str, *, age: int = 0) -> dict[str, Any]:
    return {"update_id": update_id, "message": {
        "message_id": message_id, "date": int(time.time()) - age, "text": text,
        "chat": {"id": TELEGRAM_USER, "type": "private", "first_name": "Ada"},
        "from": {"id": TELEGRAM_USER, "is_bot": False, "first_name": "Ada"}}}  # fmt: skip


def test_telegram_forged_and_replayed(
    fleet_factory, telegram_api, claw_home, redis_server, llm_server
) -> None:
    fleet = fleet_factory()  # its port is in the webhook URL the config names
    url = f"{fleet.base_url}/webhooks/telegram/"
    claw_home.write_config(fleet_config(redis_server.url, llm_server.base_url, fleet.port,
                                        channels__telegram={
        "enabled": True, "token": TELEGRAM_TOKEN, "api_base": telegram_api.base_url,
        "mode": "webhook", "webhook_url": url, "webhook_secret": TELEGRAM_SECRET,
        "dm_policy": "allowlist", "allow_from": [str(TELEGRAM_USER)]}))  # fmt: skip
    fleet.start_ingress()
    right = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    wait_for(lambda: httpx.post(url, json={"update_id": 1}, headers=right).status_code == 200,
             timeout=30, what="the telegram webhook")  # fmt: skip
    forged, markers = Tally(), []
    for n, headers in enumerate([
        {},
        {"X-Telegram-Bot-Api-Secret-Token": "wrong"},
        {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET.upper()},
        {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET + "x"},
        {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET[:-1]},
        {"X-Telegram-Bot-Api-Secret-Token": ""},
        {"Authorization": f"Bearer {TELEGRAM_SECRET}"},
    ]):  # fmt: skip
        markers.append(marker := f"forged-tg-{n}-{uuid.uuid4().hex[:6]}")
        assert forged.refused(httpx.post(url, json=telegram_update(100 + n, 100 + n, marker),
                                         headers=headers)), headers  # fmt: skip
    # Replayed: the same signed update again, and Telegram's own retry with a new update_id.
    replayed, marker = Tally(), f"legit-tg-{uuid.uuid4().hex[:6]}"
    first = httpx.post(url, json=telegram_update(200, 200, marker), headers=right)
    assert first.status_code == 200
    for update_id in (200, 200, 201):
        answer = httpx.post(url, json=telegram_update(update_id, 200, marker), headers=right)
        replayed.answered(answer)
    # A signed update captured two days ago (or dated two days ahead), sent once the mailbox
    # may have forgotten its id: its message's date tells.
    stale = []
    for n, age in enumerate((48 * HOUR, -48 * HOUR)):
        stale.append(old_marker := f"old-tg-{n}-{uuid.uuid4().hex[:6]}")
        answer = httpx.post(url, json=telegram_update(300 + n, 300 + n, old_marker, age=age),
                            headers=right)  # fmt: skip
        replayed.answered(answer)
        assert answer.status_code == 200, answer.text  # so Telegram would not send it again
    wait_for(lambda: copies(fleet.redis.url, marker) >= 1, timeout=10, what="the legit update")
    stored = copies(fleet.redis.url, marker)
    stale_stored = sum(copies(fleet.redis.url, m) for m in stale)
    replayed.rejected = replayed.tried - (stored - 1) - stale_stored
    assert "telegram message dropped: its date is too far from now" in fleet.output("ingress")
    finish("telegram", forged, replayed, fleet, forged_markers=markers,
           replay_escapes=stored - 1 + stale_stored)  # fmt: skip


# -- Feishu: X-Lark-Signature over timestamp, nonce, encrypt key and body -----------------------


@pytest.fixture
def feishu_api() -> Iterator[lark.FeishuAPI]:
    server = lark.FeishuAPI().start()
    try:
        yield server
    finally:
        server.stop()


def lark_push(payload: dict[str, Any], *, key: str = lark.ENCRYPT_KEY, sign_key: str | None = None,
              timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    body = json.dumps({"encrypt": lark.encrypt(json.dumps(payload).encode(), key)}).encode()
    stamp, nonce = (
        str(timestamp if timestamp is not None else int(time.time())),
        secrets.token_hex(8),
    )
    return body, {
        "Content-Type": "application/json",
        "X-Lark-Request-Timestamp": stamp,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": lark.lark_signature(stamp, nonce, sign_key or key, body),
    }


def test_feishu_forged_and_replayed(fleet_factory, feishu_api) -> None:
    fleet = fleet_factory(channels__feishu={
        "enabled": True, "app_id": lark.APP_ID, "app_secret": lark.APP_SECRET,
        "verification_token": lark.VERIFICATION_TOKEN, "encrypt_key": lark.ENCRYPT_KEY,
        "api_base": feishu_api.url, "dm_policy": "allowlist", "allow_from": [FEISHU_USER]})  # fmt: skip
    fleet.start_ingress()
    url = f"{fleet.base_url}/webhooks/feishu/"

    def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=10)

    wait_for(lambda: post(*lark_push(lark.url_verification("ready"))).status_code == 200,
             timeout=30, what="the feishu channel to start")  # fmt: skip
    forged, markers = Tally(), []

    def forged_event() -> dict[str, Any]:
        markers.append(marker := f"forged-fs-{len(markers)}-{uuid.uuid4().hex[:6]}")
        return lark.message_event(marker)

    body, headers = lark_push(forged_event(), key="not-the-key", sign_key="not-the-key")
    assert forged.refused(post(body, headers))  # another app's key
    body, headers = lark_push(forged_event(), sign_key="not-the-key")
    assert forged.refused(post(body, headers))  # encrypted right, signed wrong
    body, headers = lark_push(forged_event())
    other, _ = lark_push(forged_event())
    assert forged.refused(post(other, headers))  # a signature of another body
    body, headers = lark_push(forged_event())
    unsigned = {k: v for k, v in headers.items() if k != "X-Lark-Signature"}
    assert forged.refused(post(body, unsigned))  # no signature at all
    plain = json.dumps(forged_event()).encode()
    assert forged.refused(post(plain, {"Content-Type": "application/json"}))  # not encrypted
    body, headers = lark_push(lark.message_event(markers[-1], token="not-the-token"))
    assert forged.refused(post(body, headers))  # signed, but not the verification token
    # Replayed: a captured push an hour later; the same signed push twice; Feishu's retry.
    replayed = Tally()
    old_marker = f"old-fs-{uuid.uuid4().hex[:6]}"
    body, headers = lark_push(lark.message_event(old_marker), timestamp=int(time.time()) - HOUR)
    assert replayed.refused(post(body, headers))
    marker = f"legit-fs-{uuid.uuid4().hex[:6]}"
    event = lark.message_event(marker)
    body, headers = lark_push(event)
    assert post(body, headers).status_code == 200
    for again in ((body, headers), lark_push(event)):  # the same bytes; signed afresh
        answer = post(*again)
        replayed.answered(answer)
    escapes = replayed.settle(fleet, marker, old_marker, again=2)
    finish("feishu", forged, replayed, fleet, forged_markers=markers, replay_escapes=escapes)


# -- DingTalk: sign over the timestamp, msgId handled once --------------------------------------


@pytest.fixture
def dingtalk_api() -> Iterator[ding.DingTalkAPI]:
    server = ding.DingTalkAPI().start()
    try:
        yield server
    finally:
        server.stop()


def test_dingtalk_forged_and_replayed(fleet_factory, dingtalk_api) -> None:
    fleet = fleet_factory(channels__dingtalk={
        "enabled": True, "client_id": ding.CLIENT_ID, "client_secret": ding.CLIENT_SECRET,
        "api_base": dingtalk_api.url, "session_webhook_base": f"{dingtalk_api.url}/robot/",
        "dm_policy": "allowlist", "allow_from": [DING_STAFF]})  # fmt: skip
    fleet.start_ingress()
    url = f"{fleet.base_url}/webhooks/dingtalk/"

    def post(raw: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=raw, headers=headers, timeout=10)

    wait_for(lambda: post(*ding.callback({})).status_code == 200, timeout=30,
             what="the dingtalk channel to start")  # fmt: skip
    hook = dingtalk_api.session_webhook()
    forged, markers = Tally(), []

    def message() -> dict[str, Any]:
        markers.append(marker := f"forged-dt-{len(markers)}-{uuid.uuid4().hex[:6]}")
        return ding.robot_message(marker, session_webhook=hook)

    raw, headers = ding.callback(message(), secret="not-the-secret")
    assert forged.refused(post(raw, headers))
    raw, headers = ding.callback(message())
    assert forged.refused(post(raw, {"Content-Type": "application/json"}))  # unsigned
    raw, headers = ding.callback(message())
    assert forged.refused(post(raw, {**headers, "sign": headers["sign"][:-4] + "AAA="}))
    raw, headers = ding.callback(message())
    assert forged.refused(post(raw, {**headers, "timestamp": str(int(headers["timestamp"]) + 1)}))
    raw, headers = ding.callback(message(), timestamp_ms=0)
    assert forged.refused(post(raw, {**headers, "timestamp": "not-a-number"}))
    replayed = Tally()
    old_marker = f"old-dt-{uuid.uuid4().hex[:6]}"
    two_hours_ago = int((time.time() - 2 * HOUR) * 1000)
    assert replayed.refused(post(*ding.callback(
        ding.robot_message(old_marker, session_webhook=hook), timestamp_ms=two_hours_ago)))  # fmt: skip
    marker = f"legit-dt-{uuid.uuid4().hex[:6]}"
    body = ding.robot_message(marker, session_webhook=hook)
    raw, headers = ding.callback(body)
    assert post(raw, headers).status_code == 200
    for again in ((raw, headers), ding.callback(body)):
        replayed.answered(post(*again))
    escapes = replayed.settle(fleet, marker, old_marker, again=2)
    finish("dingtalk", forged, replayed, fleet, forged_markers=markers, replay_escapes=escapes)


# -- WhatsApp Cloud: X-Hub-Signature-256 over the body; the message's own timestamp -------------


@pytest.fixture
def graph() -> Iterator[meta.GraphAPI]:
    api = meta.GraphAPI().start()
    try:
        yield api
    finally:
        api.stop()


def test_whatsapp_forged_and_replayed(fleet_factory, graph) -> None:
    fleet = fleet_factory(channels__whatsapp={
        "enabled": True, "mode": "cloud", "api_base": graph.api_base,
        "access_token": meta.ACCESS_TOKEN, "phone_number_id": meta.PHONE_NUMBER_ID,
        "app_secret": meta.APP_SECRET, "verify_token": meta.VERIFY_TOKEN,
        "dm_policy": "allowlist", "allow_from": [WA_USER]})  # fmt: skip
    fleet.start_ingress()
    url = f"{fleet.base_url}/webhooks/whatsapp/"
    wait_for(lambda: httpx.get(url).status_code == 403, timeout=30, what="the webhook")
    forged, markers = Tally(), []

    def body() -> bytes:
        markers.append(marker := f"forged-wa-{len(markers)}-{uuid.uuid4().hex[:6]}")
        return json.dumps(meta.notification(messages=[meta.text_message(WA_USER, marker)])).encode()

    def post(raw: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=raw, headers=headers, timeout=10)

    raw = body()
    assert forged.refused(post(raw, meta.signed(raw, "not-the-secret")))
    raw = body()
    assert forged.refused(post(raw, {"Content-Type": "application/json"}))
    raw = body()
    assert forged.refused(post(raw, meta.signed(body())))  # another body's signature
    raw = body()
    sha1 = {"Content-Type": "application/json",
            "X-Hub-Signature": meta.signed(raw)["X-Hub-Signature-256"].replace("sha256", "sha1")}  # fmt: skip
    assert forged.refused(post(raw, sha1))
    raw = body()
    upper = meta.signed(raw)
    upper["X-Hub-Signature-256"] = "SHA256=" + upper["X-Hub-Signature-256"][7:].upper()
    assert forged.refused(post(raw, upper))
    # Replayed: a signed notification captured two days ago (its message's timestamp tells),
    # and the same signed notification twice.
    replayed = Tally()
    old_marker = f"old-wa-{uuid.uuid4().hex[:6]}"
    old = meta.text_message(WA_USER, old_marker)
    old["timestamp"] = str(int(time.time()) - 48 * HOUR)
    raw = json.dumps(meta.notification(messages=[old])).encode()
    answer = post(raw, meta.signed(raw))
    replayed.answered(answer)
    replayed.rejected += copies(fleet.redis.url, old_marker) == 0
    marker = f"legit-wa-{uuid.uuid4().hex[:6]}"
    raw = json.dumps(meta.notification(messages=[meta.text_message(WA_USER, marker)])).encode()
    assert post(raw, meta.signed(raw)).status_code == 200
    answer = post(raw, meta.signed(raw))
    replayed.answered(answer)
    escapes = replayed.settle(fleet, marker, old_marker, again=1)
    assert "whatsapp message dropped" in fleet.output("ingress") or escapes == 0
    finish("whatsapp", forged, replayed, fleet, forged_markers=markers, replay_escapes=escapes)


# -- QQ: Ed25519 over X-Signature-Timestamp + body ----------------------------------------------


@pytest.fixture
def qq() -> Iterator[qq_api.QQAPI]:
    api = qq_api.QQAPI().start()
    try:
        yield api
    finally:
        api.stop()


def test_qq_forged_and_replayed(fleet_factory, qq) -> None:
    fleet = fleet_factory(channels__qq={
        "enabled": True, "app_id": qq_api.APP_ID, "secret": qq_api.SECRET, "api_base": qq.url,
        "token_url": qq.token_url, "dm_policy": "allowlist", "allow_from": [QQ_USER]})  # fmt: skip
    fleet.start_ingress()
    url = f"{fleet.base_url}/webhooks/qq/"

    def post(raw: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=raw, headers=headers, timeout=10)

    ready = json.dumps({"op": 12}).encode()
    wait_for(lambda: post(ready, qq_api.signed(ready)).status_code == 200, timeout=30,
             what="the qq webhook")  # fmt: skip
    forged, markers = Tally(), []

    def body() -> bytes:
        markers.append(marker := f"forged-qq-{len(markers)}-{uuid.uuid4().hex[:6]}")
        return json.dumps(qq_api.c2c_message(QQ_USER, marker)).encode()

    raw = body()
    assert forged.refused(post(raw, qq_api.signed(raw, secret="not-the-secret-0123")))
    raw = body()
    assert forged.refused(post(raw, {"Content-Type": "application/json"}))
    raw = body()
    assert forged.refused(post(raw, qq_api.signed(body())))  # another body's signature
    raw = body()
    headers = qq_api.signed(raw)
    headers["X-Signature-Timestamp"] = str(int(headers["X-Signature-Timestamp"]) + 1)
    assert forged.refused(post(raw, headers))  # the timestamp is signed too
    raw = body()
    assert forged.refused(post(raw, {**qq_api.signed(raw), "X-Signature-Ed25519": "zz" * 64}))
    raw = body()
    assert forged.refused(post(raw, {**qq_api.signed(raw), "X-Bot-Appid": "999"}))
    replayed = Tally()
    old_marker = f"old-qq-{uuid.uuid4().hex[:6]}"
    raw = json.dumps(qq_api.c2c_message(QQ_USER, old_marker)).encode()
    assert replayed.refused(post(raw, qq_api.signed(raw, timestamp=int(time.time()) - HOUR)))
    marker = f"legit-qq-{uuid.uuid4().hex[:6]}"
    raw = json.dumps(qq_api.c2c_message(QQ_USER, marker)).encode()
    headers = qq_api.signed(raw)
    assert post(raw, headers).status_code == 200
    for again in (headers, qq_api.signed(raw)):
        answer = post(raw, again)
        replayed.answered(answer)
    escapes = replayed.settle(fleet, marker, old_marker, again=2)
    finish("qq", forged, replayed, fleet, forged_markers=markers, replay_escapes=escapes)
