"""Feishu (Lark): events pushed to ``/webhooks/feishu/``, replies through the open API.

The push, as the open platform documents it (event subscription, schema 2.0): a POST of
JSON, ``{"encrypt": "<base64>"}`` when the app has an Encrypt Key (AES-256-CBC, key =
SHA-256 of the Encrypt Key, the first 16 bytes of the decoded data are the IV, PKCS#7
padding). The URL check (``{"challenge", "token", "type": "url_verification"}``) is
answered with the challenge when its token is the Verification Token. Every other push is
checked before anything happens to it: with an Encrypt Key, ``X-Lark-Signature`` must be
``sha256(X-Lark-Request-Timestamp + X-Lark-Request-Nonce + encrypt_key + raw body)`` in
hex (else 401), stamped within ``max_clock_skew_sec`` of now (else 401: a replay), and
``header.token`` must be the Verification Token (else 403). Without an Encrypt Key
nothing is signed: only the Verification Token in the body vouches for a push.

``im.message.receive_v1`` becomes an ``InboundMessage``: chat ``message.chat_id``, sender
``sender.sender_id.open_id``; a group message only when it mentions the bot (its open_id,
from ``GET /open-apis/bot/v3/info`` at start), the bot's ``@_user_N`` placeholder cut out.
Feishu retries a push it did not see answered (within 3 s), so each ``event_id`` is marked
in Redis (SET NX, ``EVENT_TTL_SEC``) and handled once; the answer waits for the message to
be stored, at most ``ANSWER_WITHIN_SEC`` (a slow slash command goes on after it).

Replies: ``POST /open-apis/im/v1/messages/{message_id}/reply`` to the user's message (a
refused reply, e.g. to a withdrawn message, is sent to the chat instead), else ``POST
/open-apis/im/v1/messages?receive_id_type=chat_id``, with a tenant_access_token from
``POST /open-apis/auth/v3/tenant_access_token/internal``, kept until ``TOKEN_MARGIN_SEC``
before it expires and fetched again at once when an API calls it invalid. 429 or a
frequency-limit code → ``SendError(retry_after=x-ogw-ratelimit-reset)``; other 4xx →
permanent; the rest → retried by delivery. ``api_base`` is the domain: open.feishu.cn
(Feishu) or open.larksuite.com (Lark).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from claw_ingress.bodies import BodyError, loads_bounded
from claw_ingress.channels._http import json_object
from claw_ingress.channels.base import (
    Channel,
    ChannelContext,
    ChannelError,
    SendError,
    is_ascii_number,
    within_clock_skew,
)
from claw_ingress.channels.tokens import TokenCache
from claw_worker import constants as k
from claw_worker.config.channels import FeishuConfig
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

EVENT_TTL_SEC = 24 * 3600  # Feishu retries a push for several hours
ANSWER_WITHIN_SEC = 2.0  # Feishu wants the answer within 3 s
TOKEN_MARGIN_SEC = 300.0
RATE_LIMIT_CODES = frozenset({99991400, 230020})  # the API's, a chat's frequency limit
TOKEN_INVALID_CODES = frozenset({99991663, 99991664, 99991671})
MESSAGE_EVENT = "im.message.receive_v1"


def event_seen_key(event_id: str) -> str:
    """STRING mark: this Feishu event was handled (TTL)."""
    return k.platform_event_key("feishu", event_id)


def decrypt(encrypt_key: str, data: str) -> bytes:
    """The plaintext of an ``encrypt`` field; ValueError when it is not one."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError("not base64") from exc
    if len(raw) < 32 or len(raw) % 16:
        raise ValueError("not AES-CBC data")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def _answer(status: int, error: str = "") -> JSONResponse:
    return JSONResponse({"error": error} if error else {}, status_code=status)


class FeishuChannel(Channel):
    name = "feishu"
    max_text = 10000  # a text message's body may be 150 KB

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._tokens = TokenCache(self._fetch_token, margin_sec=TOKEN_MARGIN_SEC)
        self._bot_open_id = ""

    @property
    def config(self) -> FeishuConfig:  # type: ignore[override]
        return self.ctx.live.config.channels.feishu

    def check_config(self) -> None:
        cfg = self.config
        missing = [n for n in ("app_id", "app_secret", "verification_token") if not getattr(cfg, n)]
        if missing:
            raise ChannelError("channels.feishu needs " + ", ".join(missing))

    async def start(self) -> None:
        if not self.config.encrypt_key:
            # Feishu signs pushes only when an encrypt key is set: without it the
            # verification token in the body is all that vouches for a push, and a captured
            # push carries it in clear (event ids are still handled once).
            log.warning("feishu pushes are not signed: set channels.feishu.encrypt_key (the "
                        "app's Encrypt Key) so each push is signed and timestamped",
                        channel=self.name)  # fmt: skip
        try:
            data = await self._call("GET", "/open-apis/bot/v3/info")
        except SendError as exc:
            raise ChannelError(f"Feishu refused the app's credentials or bot info: {exc}") from exc
        self._bot_open_id = str((data.get("bot") or {}).get("open_id") or "")
        if not self._bot_open_id:
            raise ChannelError("Feishu gave no bot open_id: enable the app's bot ability")

    def routes(self) -> list[BaseRoute]:
        return [Route("/", self._webhook, methods=["POST"])]

    def describe(self) -> dict[str, Any]:
        return {"bot_open_id": self._bot_open_id, "api_base": self.config.api_base}

    # -- receiving -------------------------------------------------------------------------

    async def _webhook(self, request: Request) -> JSONResponse:
        cfg = self.config
        body = await request.body()
        headers = request.headers
        signed = bool(cfg.encrypt_key) and hmac.compare_digest(
            headers.get("x-lark-signature", "").encode(),
            signature(headers.get("x-lark-request-timestamp", ""),
                      headers.get("x-lark-request-nonce", ""), cfg.encrypt_key, body).encode(),
        )  # fmt: skip
        if cfg.encrypt_key and "x-lark-signature" in headers and not signed:
            return self._refuse(401, "bad X-Lark-Signature")
        stamp = headers.get("x-lark-request-timestamp", "")
        if signed and not within_clock_skew(stamp, cfg.max_clock_skew_sec):
            return self._refuse(401, "X-Lark-Request-Timestamp is too far from now (a replay?)")
        try:
            payload = loads_bounded(body)  # read before anything vouches for it: bounded
            if isinstance(payload, dict) and "encrypt" in payload:
                if not cfg.encrypt_key:
                    return self._refuse(400, "an encrypted push, and no encrypt_key is set")
                payload = loads_bounded(decrypt(cfg.encrypt_key, payload["encrypt"]))
        except (ValueError, BodyError):
            return self._refuse(401 if cfg.encrypt_key else 400, "not a Feishu push")
        if not isinstance(payload, dict):
            return self._refuse(400, "not a Feishu push")
        if payload.get("type") == "url_verification":  # not signed, by Feishu's design
            if not self._token_ok(payload.get("token")):
                return self._refuse(403, "wrong verification token")
            return JSONResponse({"challenge": str(payload.get("challenge", ""))})
        if cfg.encrypt_key and not signed:
            return self._refuse(401, "no X-Lark-Signature")
        header = payload.get("header")
        if payload.get("schema") != "2.0" or not isinstance(header, dict):
            return _answer(200)  # a 1.0 event: subscribe to the 2.0 ones
        if not self._token_ok(header.get("token")):
            return self._refuse(403, "wrong verification token")
        if header.get("event_type") != MESSAGE_EVENT:
            return _answer(200)
        try:
            message = self._inbound(payload.get("event"))
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            return self._refuse(400, f"not an {MESSAGE_EVENT} event: {exc!r}")
        if message is None:
            return _answer(200)
        event_id = str(header.get("event_id") or "")
        if event_id and not await self.ctx.redis.set(event_seen_key(event_id), 1, nx=True,
                                                     ex=EVENT_TTL_SEC):  # fmt: skip
            log.info("feishu event already handled", channel=self.name, event_id=event_id)
            return _answer(200)
        if not await self.receive_in_time(message, within=ANSWER_WITHIN_SEC):
            if event_id:
                await self.ctx.redis.delete(event_seen_key(event_id))
            return _answer(503, "not stored; try again")
        return _answer(200)

    def _token_ok(self, given: Any) -> bool:
        return isinstance(given, str) and hmac.compare_digest(
            given.encode(), self.config.verification_token.encode()
        )

    def _refuse(self, status: int, reason: str) -> JSONResponse:
        log.warning("feishu push refused", channel=self.name, status=status, error=reason)
        return _answer(status, reason)

    def _inbound(self, event: Any) -> InboundMessage | None:
        if not isinstance(event, dict):
            return None
        sender, message = event.get("sender") or {}, event.get("message") or {}
        if sender.get("sender_type", "user") != "user" or not message.get("chat_id"):
            return None
        mentions = [m for m in message.get("mentions") or [] if isinstance(m, dict)]
        bot_keys = [m.get("key", "") for m in mentions
                    if (m.get("id") or {}).get("open_id") == self._bot_open_id]  # fmt: skip
        if message.get("chat_type") != "p2p" and not bot_keys:
            return None  # a group message for someone else
        message_id = str(message.get("message_id") or "")
        text, media = _content(message.get("message_type"), message.get("content"), message_id)
        text = _replace_mentions(text, mentions, bot_keys).strip()
        if not text and not media:
            return None
        return InboundMessage(
            channel=self.name,
            chat_id=str(message["chat_id"]),
            sender_id=str((sender.get("sender_id") or {}).get("open_id") or ""),
            text=text,
            media=media,
            metadata={
                "platform_message_id": message_id,
                "chat_type": message.get("chat_type"),
                "group": message.get("chat_type") != "p2p",
            },
        )

    # -- sending ---------------------------------------------------------------------------

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        content = json.dumps({"text": text}, ensure_ascii=False)
        if reply_to:
            try:
                await self._call("POST", f"/open-apis/im/v1/messages/{quote(reply_to, safe='')}"
                                 "/reply", json={"msg_type": "text", "content": content})  # fmt: skip
                return
            except SendError as exc:
                if not exc.permanent:
                    raise
                log.warning("feishu refused the reply; sending to the chat", channel=self.name,
                            chat_id=chat_id, error=str(exc))  # fmt: skip
        await self._call("POST", "/open-apis/im/v1/messages", params={"receive_id_type": "chat_id"},
                         json={"receive_id": chat_id, "msg_type": "text", "content": content})  # fmt: skip

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One open API call with the tenant token (fetched again once if it is refused)."""
        for attempt in (1, 2):
            token = await self._tokens.get()
            try:
                response = await self.ctx.http.request(
                    method, self.config.api_base + path,
                    headers={"Authorization": f"Bearer {token}"}, **kwargs,
                )  # fmt: skip
            except httpx.HTTPError as exc:
                raise SendError(f"Feishu unreachable: {exc!r}") from exc
            data = json_object(response)
            code = data.get("code")
            if response.status_code == 200 and code == 0:
                return data
            if code in TOKEN_INVALID_CODES and attempt == 1:
                self._tokens.drop(token)
                continue
            raise _send_error(response, code, str(data.get("msg", "")))
        raise AssertionError("unreachable")

    async def _fetch_token(self) -> tuple[str, float]:
        """A tenant_access_token and its lifetime (for ``self._tokens``)."""
        cfg = self.config
        try:
            response = await self.ctx.http.post(
                cfg.api_base + "/open-apis/auth/v3/tenant_access_token/internal",
                json={"app_id": cfg.app_id, "app_secret": cfg.app_secret},
            )
        except httpx.HTTPError as exc:
            raise SendError(f"Feishu unreachable: {exc!r}") from exc
        data = json_object(response)
        token, expire = data.get("tenant_access_token"), data.get("expire")
        if data.get("code") != 0 or not token or not isinstance(expire, int):
            raise SendError(f"no tenant_access_token (HTTP {response.status_code}, "
                            f"code {data.get('code')}: {data.get('msg', '')})")  # fmt: skip
        return str(token), expire


def _send_error(response: httpx.Response, code: Any, msg: str) -> SendError:
    what = f"Feishu answered HTTP {response.status_code}, code {code}: {msg[:200]}"
    if response.status_code == 429 or code in RATE_LIMIT_CODES:
        reset = response.headers.get("x-ogw-ratelimit-reset", "")
        return SendError(what, retry_after=float(reset) if is_ascii_number(reset) else 1.0)
    if response.status_code >= 500 or code is None or code in TOKEN_INVALID_CODES:
        return SendError(what)
    return SendError(what, permanent=True)


def _replace_mentions(text: str, mentions: list[dict[str, Any]], bot_keys: list[Any]) -> str:
    """``text`` with each mention's key (``@_user_1``) cut (the bot's) or made ``@name``, in
    one pass, longest key first: ``@_user_1`` is the start of ``@_user_10``."""
    names = {str(m.get("key")): str(m.get("name") or "") for m in mentions if m.get("key")}
    if not names:
        return text
    keys = sorted(names, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(key) for key in keys))
    return pattern.sub(lambda m: "" if m[0] in bot_keys else f"@{names[m[0]]}", text)


def _content(kind: Any, raw: Any, message_id: str) -> tuple[str, list[str]]:
    """(text, media references) of a received message's ``content`` JSON."""
    try:
        content = loads_bounded(raw.encode()) if isinstance(raw, str) else {}
    except BodyError:
        content = {}
    if not isinstance(content, dict):
        return "", []
    if kind == "text":
        return str(content.get("text", "")), []
    if kind == "post":
        lines, media = [str(content.get("title") or "")], []
        for paragraph in content.get("content") or []:
            parts = []
            for element in paragraph if isinstance(paragraph, list) else []:
                tag = element.get("tag") if isinstance(element, dict) else None
                if tag in ("text", "a"):
                    parts.append(str(element.get("text", "")))
                elif tag == "at":
                    parts.append(str(element.get("user_id", "")))
                elif tag == "img" and element.get("image_key"):
                    media.append(f"feishu:image:{message_id}:{element['image_key']}")
            lines.append("".join(parts))
        return "\n".join(line for line in lines if line), media
    if kind == "image" and content.get("image_key"):
        return "[image]", [f"feishu:image:{message_id}:{content['image_key']}"]
    if kind in ("file", "audio", "media") and content.get("file_key"):
        name = content.get("file_name") or kind
        return f"[{kind}: {name}]", [f"feishu:{kind}:{message_id}:{content['file_key']}"]
    return "", []
