"""A loopback QQ bot open platform, both ways, as its documentation (bot.q.qq.com wiki,
tencent-connect/bot-docs) describes it; written from it, independently of the adapter.

``QQAPI``:
  POST /app/getAppAccessToken {appId, clientSecret}  -> {access_token, expires_in: "7200"}
       (a wrong pair: {code: 100016, message: "invalid appid or secret"})
  POST /v2/users/{openid}/messages         {content, msg_type, msg_id, msg_seq}
  POST /v2/groups/{group_openid}/messages  {content, msg_type, msg_id, msg_seq}
       -> {id, timestamp}
Sends need ``Authorization: QQBot <access_token>`` (else HTTP 401, code 11244). A second
reply with the same msg_id and msg_seq is refused (code 40054005, as QQ does). Every send
is in ``sends`` (path, body, token, status); ``token_fetches`` counts token requests.

The push side: the callback body (``payload``) and the headers QQ signs it with. The bot's
Ed25519 key comes from its secret (the secret repeated until it has 32 bytes, the first 32
bytes as the seed); ``X-Signature-Ed25519`` is the hex signature of
``X-Signature-Timestamp`` + body; op 13 asks the bot to sign ``event_ts + plain_token``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.platforms.base import Handler, LoopbackHTTP

APP_ID = "102075389"
SECRET = "DG5g3B4j9X2KOErG"  # the example secret of QQ's documentation
TOKEN_EXPIRES_SEC = 7200


class _Handler(Handler):
    def do_POST(self) -> None:
        raw = self.read_body()
        path = urlsplit(self.path).path
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_json(400, {"message": "invalid json", "code": 40034001})
            return
        if path == "/app/getAppAccessToken":
            self.send_json(*self.fake._issue_token(body))
        elif path.startswith(("/v2/users/", "/v2/groups/")) and path.endswith("/messages"):
            self.send_json(*self.fake._send(path, self.headers.get("Authorization", ""), body))
        else:
            self.send_json(404, {"message": "not found", "code": 404})


class QQAPI(LoopbackHTTP):
    handler = _Handler

    def __init__(self) -> None:
        self.sends: list[dict[str, Any]] = []
        self.token_fetches = 0
        self._tokens: set[str] = set()
        self._lock = threading.Lock()

    @property
    def token_url(self) -> str:
        return f"{self.url}/app/getAppAccessToken"

    def delivered(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                s for s in self.sends if s["status"] == 200 and (path is None or s["path"] == path)
            ]

    def _issue_token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("appId") != APP_ID or body.get("clientSecret") != SECRET:
            return 200, {"code": 100016, "message": "invalid appid or secret"}
        token = uuid.uuid4().hex
        with self._lock:
            self.token_fetches += 1
            self._tokens.add(token)
        return 200, {"access_token": token, "expires_in": str(TOKEN_EXPIRES_SEC)}

    def _send(self, path: str, auth: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        token = auth.removeprefix("QQBot ")
        with self._lock:
            record = {"path": path, "body": body, "token": token}
            self.sends.append(record)
            if not auth.startswith("QQBot ") or token not in self._tokens:
                record["status"] = 401
                return 401, {"message": "token not exist or expire", "code": 11244}
            if not isinstance(body.get("content"), str) or body.get("msg_type") != 0:
                record["status"] = 400
                return 400, {"message": "invalid request", "code": 40034002}
            key = (body.get("msg_id"), body.get("msg_seq", 1))
            if key[0] and any(
                (s["body"].get("msg_id"), s["body"].get("msg_seq", 1)) == key
                for s in self.sends[:-1]
                if s["status"] == 200
            ):
                record["status"] = 400
                return 400, {"message": "msg_seq duplicated", "code": 40054005}
            record["status"] = 200
        return 200, {"id": "ROBOT1.0_" + uuid.uuid4().hex, "timestamp": int(time.time())}


# -- the push side --------------------------------------------------------------------------


def bot_key(secret: str = SECRET) -> Ed25519PrivateKey:
    """QQ's derivation: repeat the secret until it is 32 bytes long; those bytes are the seed."""
    seed = secret
    while len(seed) < 32:
        seed = seed * 2
    return Ed25519PrivateKey.from_private_bytes(seed[:32].encode())


def public_key(secret: str = SECRET) -> Ed25519PublicKey:
    return bot_key(secret).public_key()


def signed(body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers QQ sends with a callback body."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = bot_key(secret).sign(stamp.encode() + body).hex()
    return {
        "Content-Type": "application/json",
        "User-Agent": "QQBot-Callback",
        "X-Bot-Appid": APP_ID,
        "X-Signature-Method": "Ed25519",
        "X-Signature-Timestamp": stamp,
        "X-Signature-Ed25519": signature,
    }


def validation(plain_token: str, event_ts: str) -> dict[str, Any]:
    return {"d": {"plain_token": plain_token, "event_ts": event_ts}, "op": 13}


def c2c_message(user_openid: str, content: str, *, msg_id: str | None = None) -> dict[str, Any]:
    data = {
        "author": {"id": user_openid, "user_openid": user_openid, "union_openid": user_openid},
        "content": content,
        "id": msg_id or new_msg_id(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
        "message_scene": {"source": "default"},
    }
    return _dispatch("C2C_MESSAGE_CREATE", data)


def group_at_message(group_openid: str, member_openid: str, content: str) -> dict[str, Any]:
    data = {
        "author": {"id": member_openid, "member_openid": member_openid},
        "content": " " + content,  # what follows the stripped @mention
        "group_id": group_openid,
        "group_openid": group_openid,
        "id": new_msg_id(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
    }
    return _dispatch("GROUP_AT_MESSAGE_CREATE", data)


def new_msg_id() -> str:
    return "ROBOT1.0_" + uuid.uuid4().hex + "!!"


def _dispatch(event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"op": 0, "id": f"{event}:{uuid.uuid4()}", "d": data, "s": 1, "t": event}
