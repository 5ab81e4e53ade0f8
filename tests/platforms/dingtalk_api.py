"""A loopback DingTalk open platform, both ways, as its documentation describes it.

The API side (``DingTalkAPI``):
  POST /v1.0/oauth2/accessToken  {appKey, appSecret} -> {accessToken, expireIn}
       (wrong secret: HTTP 400 {code, message})
  POST /v1.0/robot/oToMessages/batchSend  {robotCode, userIds, msgKey, msgParam}
       -> {processQueryKey, invalidStaffIdList, flowControlledStaffIdList}
  POST /v1.0/robot/groupMessages/send     {robotCode, openConversationId, msgKey, msgParam}
       -> {processQueryKey}
  POST /robot/sendBySession?session=<id>  {msgtype: "text", text: {content}}
       -> {errcode: 0, errmsg: "ok"}   (the sessionWebhook of a pushed message)
The robot calls need header ``x-acs-dingtalk-access-token``: an unknown or expired token
gets HTTP 401 ``{code: "InvalidAuthentication"}``. Scriptable: ``expire_tokens()``,
``throttle(n)`` (the next n robot calls get HTTP 403
``Forbidden.AccessDenied.QpsLimitForAppkeyAndApi``). Every call is recorded in ``calls``.

The push side: ``robot_message`` builds the body of a robot's HTTP-mode callback,
``callback`` the (body, headers) DingTalk POSTs: ``timestamp`` (ms) and ``sign`` =
base64(HMAC-SHA256(AppSecret, timestamp + "\\n" + AppSecret)). Written from the
documentation, independently of the adapter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.platforms.base import Handler, LoopbackHTTP

CLIENT_ID = "dingq8zu1e6mrm0yqi0b"
CLIENT_SECRET = "dingtalk-app-secret-Zx81pQ"
ROBOT_USER = "$:LWCP_v1:$robot0000000000"
TOKEN_EXPIRE_SEC = 7200
INVALID_TOKEN = {"code": "InvalidAuthentication", "message": "不合法的access_token"}
MAX_TEXT_BYTES = 20000  # a text message's content, counted in UTF-8 bytes
TOO_LONG = {"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"}
THROTTLED = {"code": "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
             "message": "调用该接口次数过多，请求被暂时限流了"}  # fmt: skip


class _Handler(Handler):
    content_type = "application/json;charset=utf-8"
    ensure_ascii = False

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        raw = self.read_body()
        status, answer = self.fake.handle(
            split.path, parse_qs(split.query), self.headers, json.loads(raw) if raw else {}
        )
        self.send_json(status, answer)


@dataclass
class DingTalkAPI(LoopbackHTTP):
    handler = _Handler
    calls: list[dict[str, Any]] = field(default_factory=list)
    token_fetches: int = 0
    _valid: set[str] = field(default_factory=set)
    _throttle: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session_webhook(self) -> str:
        return f"{self.url}/robot/sendBySession?session={secrets.token_hex(16)}"

    def expire_tokens(self) -> None:
        with self._lock:
            self._valid.clear()

    def throttle(self, times: int = 1) -> None:
        with self._lock:
            self._throttle = times

    def sent(self) -> list[dict[str, Any]]:
        """Messages DingTalk accepted, in order: {"via", "text", "to", "token", ...}."""
        with self._lock:
            return [c for c in self.calls if c["status"] == 200 and c["kind"] != "token"
                    and c["answer"].get("errcode", 0) == 0]  # fmt: skip

    def texts(self) -> list[str]:
        return [c["text"] for c in self.sent()]

    def handle(self, path: str, query: dict[str, list[str]], headers: Any,
               body: dict[str, Any]) -> tuple[int, dict[str, Any]]:  # fmt: skip
        if path == "/v1.0/oauth2/accessToken":
            return self._token(body)
        if path == "/robot/sendBySession":
            kind, to = "session", query.get("session", [""])[0]
            text = (
                (body.get("text") or {}).get("content") if body.get("msgtype") == "text" else None
            )
            if not text:
                status, answer = 400, {"errcode": 40035, "errmsg": "缺少参数 json"}
            elif len(text.encode()) > MAX_TEXT_BYTES:
                status, answer = 200, TOO_LONG  # DingTalk answers errors with HTTP 200
            else:
                status, answer = 200, {"errcode": 0, "errmsg": "ok"}
            token = ""
        elif path in ("/v1.0/robot/oToMessages/batchSend", "/v1.0/robot/groupMessages/send"):
            kind = "single" if "oToMessages" in path else "group"
            token = headers.get("x-acs-dingtalk-access-token", "")
            to = body.get("userIds") if kind == "single" else body.get("openConversationId")
            text = json.loads(body.get("msgParam") or "{}").get("content")
            status, answer = self._robot(kind, token, body, text)
        else:
            return 404, {"code": "NotFound", "message": path}
        with self._lock:
            self.calls.append({"kind": kind, "to": to, "text": text, "token": token,
                               "body": body, "status": status, "answer": answer})  # fmt: skip
        return status, answer

    def _token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("appKey") != CLIENT_ID or body.get("appSecret") != CLIENT_SECRET:
            return 400, {
                "code": "invalidClientIdOrSecret",
                "message": "无效的clientId或者clientSecret",
            }
        token = secrets.token_hex(16)
        with self._lock:
            self.token_fetches += 1
            self._valid.add(token)
            self.calls.append({"kind": "token", "status": 200})
        return 200, {"accessToken": token, "expireIn": TOKEN_EXPIRE_SEC}

    def _robot(self, kind: str, token: str, body: dict[str, Any],
               text: str | None) -> tuple[int, dict[str, Any]]:  # fmt: skip
        with self._lock:
            if token not in self._valid:
                return 401, INVALID_TOKEN
            if self._throttle:
                self._throttle -= 1
                return 403, THROTTLED
        if body.get("robotCode") != CLIENT_ID or body.get("msgKey") != "sampleText" or not text:
            return 400, {"code": "invalidParameter", "message": "robotCode/msgKey/msgParam"}
        if len(text.encode()) > MAX_TEXT_BYTES:
            return 400, {"code": "invalidParameter.msgParam.tooLong", "message": TOO_LONG["errmsg"]}
        if kind == "single":
            return 200, {"processQueryKey": uuid.uuid4().hex, "invalidStaffIdList": [],
                         "flowControlledStaffIdList": []}  # fmt: skip
        return 200, {"processQueryKey": uuid.uuid4().hex}


# -- the push side -----------------------------------------------------------------------


def robot_message(
    text: str,
    *,
    session_webhook: str,
    webhook_expires_ms: int | None = None,
    conversation_id: str = "cidp4bhyf3wAm8Ys1PZjLAJgA==",
    conversation_type: str = "1",
    staff_id: str = "manager4220",
    in_at_list: bool = True,
    msg_id: str | None = None,
) -> dict[str, Any]:
    """The body of a robot's HTTP-mode callback, as DingTalk pushes it."""
    now = int(time.time() * 1000)
    body: dict[str, Any] = {
        "conversationId": conversation_id,
        "chatbotCorpId": "dinge8a565xxxx",
        "chatbotUserId": ROBOT_USER,
        "msgId": msg_id or "msg" + uuid.uuid4().hex,
        "senderNick": "杨测试",
        "isAdmin": True,
        "senderStaffId": staff_id,
        "sessionWebhookExpiredTime": webhook_expires_ms or now + 90 * 60 * 1000,
        "createAt": now,
        "senderCorpId": "dinge8a565xxxx",
        "conversationType": conversation_type,
        "senderId": "$:LWCP_v1:$Ff09GIxxxxx" + staff_id,
        "isInAtList": in_at_list,
        "sessionWebhook": session_webhook,
        "text": {"content": " " + text},
        "msgtype": "text",
        "robotCode": CLIENT_ID,
    }
    if conversation_type == "2":
        body["conversationTitle"] = "机器人测试-TEST"
        body["atUsers"] = [{"dingtalkId": ROBOT_USER}] if in_at_list else []
    return body


def dingtalk_sign(timestamp: str, secret: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def callback(body: dict[str, Any], *, secret: str = CLIENT_SECRET,
             timestamp_ms: int | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """(body, headers) of DingTalk's POST of ``body``, signed with ``secret``."""
    timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    headers = {"Content-Type": "application/json; charset=utf-8", "timestamp": timestamp,
               "sign": dingtalk_sign(timestamp, secret)}  # fmt: skip
    return json.dumps(body, ensure_ascii=False).encode(), headers
