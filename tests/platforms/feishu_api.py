"""A loopback Feishu (Lark) open platform, both ways, as its documentation describes it.

The API side (``FeishuAPI``), JSON answers ``{"code", "msg", ...}``:
  POST /open-apis/auth/v3/tenant_access_token/internal  {app_id, app_secret}
       -> {code: 0, tenant_access_token, expire}   (wrong secret: code 10014)
  GET  /open-apis/bot/v3/info                            -> {code: 0, bot: {open_id, ...}}
  POST /open-apis/im/v1/messages?receive_id_type=chat_id {receive_id, msg_type, content}
  POST /open-apis/im/v1/messages/{message_id}/reply      {msg_type, content}
       -> {code: 0, data: {message_id, chat_id, ...}}
Calls need ``Authorization: Bearer <tenant token>``: an unknown or expired token gets HTTP
400 ``{code: 99991663}``. Scriptable: ``expire_tokens()`` (every token issued so far stops
working), ``rate_limit(n)`` (the next n message calls get HTTP 429 ``{code: 99991400}`` with
``x-ogw-ratelimit-reset``), ``withdrawn`` (message ids whose reply gets ``{code: 230011}``).
Every call is recorded in ``calls`` (path, body, token, the answer's status and code).

The push side: ``message_event`` builds an ``im.message.receive_v1`` event (schema 2.0),
``push`` turns an event into the request body and headers Feishu sends: encrypted
(AES-256-CBC, key SHA-256(encrypt_key), random IV in front, PKCS#7, base64) and signed
(``X-Lark-Signature`` = hex SHA-256 of timestamp + nonce + encrypt_key + body) when an
encrypt key is given. Written from the documentation, independently of the adapter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.platforms.base import Handler, LoopbackHTTP

APP_ID = "cli_a5f0c1d2e3b4a697"
APP_SECRET = "feishu-app-secret-0123456789"
BOT_OPEN_ID = "ou_7d8a6e6df7621556ce0d21922b676706"
VERIFICATION_TOKEN = "feishu-verification-token-42"
ENCRYPT_KEY = "feishu-encrypt-key-kKq3"
TOKEN_EXPIRE_SEC = 7200
TOKEN_INVALID = {"code": 99991663, "msg": "Invalid access token for authorization."}
RATE_LIMITED = {"code": 99991400, "msg": "request trigger frequency limit"}


class _Handler(Handler):
    content_type = "application/json; charset=utf-8"

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        raw = self.read_body()
        body = json.loads(raw) if raw else {}
        status, answer, extra = self.fake.handle(
            method, split.path, parse_qs(split.query), self.headers, body
        )
        self.send_json(status, answer, extra)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


@dataclass
class FeishuAPI(LoopbackHTTP):
    handler = _Handler
    calls: list[dict[str, Any]] = field(default_factory=list)
    token_fetches: int = 0
    withdrawn: set[str] = field(default_factory=set)
    _valid: set[str] = field(default_factory=set)
    _rate_limits: int = 0
    _reset_sec: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- scripting -------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        with self._lock:
            self._valid.clear()

    def rate_limit(self, times: int = 1, reset_sec: int = 1) -> None:
        with self._lock:
            self._rate_limits, self._reset_sec = times, reset_sec

    # -- inspection ------------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The message calls Feishu accepted (sends and replies), in order."""
        with self._lock:
            return [c for c in self.calls if c["kind"] in ("send", "reply") and c["code"] == 0]

    def texts(self) -> list[str]:
        return [json.loads(c["body"]["content"])["text"] for c in self.messages()]

    # -- answering -------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
               body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        if path == "/open-apis/auth/v3/tenant_access_token/internal" and method == "POST":
            return self._token(body)
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if path == "/open-apis/bot/v3/info" and method == "GET":
            kind = "bot_info"
        elif path == "/open-apis/im/v1/messages" and method == "POST":
            kind = "send"
        elif path.startswith("/open-apis/im/v1/messages/") and path.endswith("/reply"):
            kind = "reply"
        else:
            return 404, {"code": 404, "msg": "not found"}, {}
        status, answer, extra = self._answer(kind, path, query, token, body)
        with self._lock:
            self.calls.append({"kind": kind, "path": path, "query": query, "token": token,
                               "body": body, "status": status, "code": answer.get("code")})  # fmt: skip
        return status, answer, extra

    def _token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if body.get("app_id") != APP_ID or body.get("app_secret") != APP_SECRET:
            return 400, {"code": 10014, "msg": "app secret invalid"}, {}
        token = "t-" + secrets.token_hex(20)
        with self._lock:
            self.token_fetches += 1
            self._valid.add(token)
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token,
                     "expire": TOKEN_EXPIRE_SEC}, {}  # fmt: skip

    def _answer(self, kind: str, path: str, query: dict[str, list[str]], token: str,
                body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        with self._lock:
            if token not in self._valid:
                return 400, TOKEN_INVALID, {}
            if kind == "bot_info":
                return 200, {"code": 0, "msg": "ok", "bot": {
                    "activate_status": 2, "app_name": "claw", "open_id": BOT_OPEN_ID}}, {}  # fmt: skip
            if self._rate_limits:
                self._rate_limits -= 1
                return 429, RATE_LIMITED, {"x-ogw-ratelimit-limit": "50",
                                           "x-ogw-ratelimit-reset": str(self._reset_sec)}  # fmt: skip
        if body.get("msg_type") != "text" or "text" not in json.loads(body.get("content") or "{}"):
            return 400, {"code": 230001, "msg": "invalid message content"}, {}
        if kind == "reply":
            target = path.split("/")[-2]
            if target in self.withdrawn:
                return 400, {"code": 230011, "msg": "The message was withdrawn."}, {}
            chat_id = "oc_from_reply"
        else:
            if query.get("receive_id_type") != ["chat_id"] or not body.get("receive_id"):
                return 400, {"code": 230001, "msg": "invalid receive_id"}, {}
            chat_id = body["receive_id"]
        return 200, {"code": 0, "msg": "success", "data": {
            "message_id": "om_" + uuid.uuid4().hex, "chat_id": chat_id, "msg_type": "text",
            "create_time": str(int(time.time() * 1000)), "body": {"content": body["content"]},
            "sender": {"id": APP_ID, "id_type": "app_id", "sender_type": "app"}}}, {}  # fmt: skip


# -- the push side -----------------------------------------------------------------------


def message_event(
    text: str,
    *,
    chat_id: str = "oc_5ad11d72b830411d72b836c20",
    chat_type: str = "p2p",
    sender_open_id: str = "ou_84aad35d084aa403a838cf73ee18467",
    mentions: list[dict[str, Any]] | None = None,
    event_id: str | None = None,
    message_id: str | None = None,
    token: str = VERIFICATION_TOKEN,
) -> dict[str, Any]:
    """An ``im.message.receive_v1`` event (schema 2.0), as Feishu pushes it."""
    now = str(int(time.time() * 1000))
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or uuid.uuid4().hex,
            "token": token,
            "create_time": now,
            "event_type": "im.message.receive_v1",
            "tenant_key": "736588c9260f175d",
            "app_id": APP_ID,
        },
        "event": {
            "sender": {
                "sender_id": {
                    "union_id": "on_8ed6aa67826108097d9ee143816345",
                    "user_id": "e33ggbyz",
                    "open_id": sender_open_id,
                },
                "sender_type": "user",
                "tenant_key": "736588c9260f175d",
            },
            "message": {
                "message_id": message_id or "om_" + uuid.uuid4().hex,
                "create_time": now,
                "chat_id": chat_id,
                "chat_type": chat_type,
                "message_type": "text",
                "content": json.dumps({"text": text}, ensure_ascii=False),
                "mentions": mentions or [],
            },
        },
    }


def bot_mention(key: str = "@_user_1", open_id: str = BOT_OPEN_ID) -> dict[str, Any]:
    return {"key": key, "id": {"union_id": "on_bot", "user_id": "", "open_id": open_id},
            "name": "claw", "tenant_key": "736588c9260f175d"}  # fmt: skip


def url_verification(challenge: str, token: str = VERIFICATION_TOKEN) -> dict[str, Any]:
    return {"challenge": challenge, "token": token, "type": "url_verification"}


def encrypt(plaintext: bytes, encrypt_key: str) -> str:
    key = hashlib.sha256(encrypt_key.encode()).digest()
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode()


def lark_signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256(
        timestamp.encode() + nonce.encode() + encrypt_key.encode() + body
    ).hexdigest()


def push(
    payload: dict[str, Any], *, encrypt_key: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of Feishu's POST of ``payload``: plain, or encrypted and signed."""
    headers = {"Content-Type": "application/json; charset=utf-8",
               "User-Agent": "Go-http-client/1.1"}  # fmt: skip
    plain = json.dumps(payload, ensure_ascii=False).encode()
    if encrypt_key is None:
        return plain, headers
    body = json.dumps({"encrypt": encrypt(plain, encrypt_key)}).encode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
    headers.update({
        "X-Lark-Request-Timestamp": timestamp,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": lark_signature(timestamp, nonce, encrypt_key, body),
    })  # fmt: skip
    return body, headers
