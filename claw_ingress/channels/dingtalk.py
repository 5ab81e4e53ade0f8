"""DingTalk: an internal app's robot in HTTP mode, messages pushed to ``/webhooks/dingtalk/``.

The push, as DingTalk documents it (robot "receive messages", HTTP mode): a POST of JSON
with headers ``timestamp`` (ms) and ``sign`` = base64(HMAC-SHA256(key = AppSecret,
timestamp + "\\n" + AppSecret)). It is refused (401) unless the sign matches (compared in
constant time) and the timestamp is within ``max_clock_skew_sec`` (DingTalk: 1 hour) of
now. The sign covers the timestamp only, not the body, so a captured request could be
replayed within that window: each ``msgId`` is handled once (SET NX, ``SEEN_TTL_SEC``,
longer than the window), and replies go to a body's ``sessionWebhook`` only when it is on
``session_webhook_base`` (DingTalk's own host), never wherever a body points.

The body becomes an ``InboundMessage``: chat ``conversationId``, sender ``senderStaffId``
(else ``senderId``), name ``senderNick``; a group message (``conversationType`` "2") only
when the robot was @-mentioned (``isInAtList``). The conversation is remembered in Redis
(``conversation_key``: its type, the sender's staff id, the ``sessionWebhook`` and its
``sessionWebhookExpiredTime``), so any ingress replica can reply. The answer waits for the
message to be stored, at most ``ANSWER_WITHIN_SEC``.

Replies: ``POST sessionWebhook`` ``{"msgtype": "text", "text": {"content"}}`` while it has
more than ``WEBHOOK_MARGIN_MS`` left (``errcode`` 0 is sent; a refusal drops the webhook
and falls back); otherwise the open API with an access token (``POST
/v1.0/oauth2/accessToken`` {appKey, appSecret} → {accessToken, expireIn}, kept until
``TOKEN_MARGIN_SEC`` before it expires, fetched again when refused with 401) in header
``x-acs-dingtalk-access-token``: ``/v1.0/robot/oToMessages/batchSend`` (a single chat, to
the sender's staff id) or ``/v1.0/robot/groupMessages/send`` (a group), ``msgKey``
"sampleText". 429, a ``QpsLimit``/``Throttling`` code or a flow-controlled user →
``SendError(retry_after=)``; other 4xx → permanent; the rest → retried by delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
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
from claw_worker.config.channels import DingTalkConfig
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

SEEN_TTL_SEC = 2 * 3600  # longer than the signature's window
CONVERSATION_TTL_SEC = 30 * 86400
ANSWER_WITHIN_SEC = 2.0
WEBHOOK_MARGIN_MS = 60_000
TOKEN_MARGIN_SEC = 300.0
WEBHOOK_RATE_LIMITED = 130101  # "send too fast"
RATE_LIMIT_MARKERS = ("QpsLimit", "Throttling")
SINGLE, GROUP = "1", "2"


def message_seen_key(msg_id: str) -> str:
    """STRING mark: this DingTalk message was handled (TTL)."""
    return k.platform_event_key("dingtalk", msg_id)


def conversation_key(conversation_id: str) -> str:
    """HASH type, staff_id, webhook, webhook_expires (ms) of a DingTalk conversation (TTL)."""
    return k.channel_state_key("dingtalk", "conv", conversation_id)


def sign(timestamp: str, secret: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def _answer(status: int, error: str = "") -> JSONResponse:
    return JSONResponse({"error": error} if error else {}, status_code=status)


class DingTalkChannel(Channel):
    name = "dingtalk"
    max_text = 20000  # a text message's content: UTF-8 bytes, not characters

    @staticmethod
    def text_length(text: str) -> int:
        return len(text.encode("utf-8"))

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._tokens = TokenCache(self._fetch_token, margin_sec=TOKEN_MARGIN_SEC)

    @property
    def config(self) -> DingTalkConfig:  # type: ignore[override]
        return self.ctx.live.config.channels.dingtalk

    def check_config(self) -> None:
        missing = [n for n in ("client_id", "client_secret") if not getattr(self.config, n)]
        if missing:
            raise ChannelError("channels.dingtalk needs " + ", ".join(missing))

    async def start(self) -> None:
        try:
            await self._tokens.get()
        except SendError as exc:
            raise ChannelError(f"DingTalk refused the app's credentials: {exc}") from exc

    def routes(self) -> list[BaseRoute]:
        return [Route("/", self._webhook, methods=["POST"])]

    def describe(self) -> dict[str, Any]:
        return {"api_base": self.config.api_base}

    # -- receiving -------------------------------------------------------------------------

    async def _webhook(self, request: Request) -> JSONResponse:
        cfg = self.config
        timestamp, given = request.headers.get("timestamp", ""), request.headers.get("sign", "")
        if not hmac.compare_digest(given.encode(), sign(timestamp, cfg.client_secret).encode()):
            return self._refuse(401, "bad sign")
        if not within_clock_skew(timestamp, cfg.max_clock_skew_sec, per_sec=1000):
            return self._refuse(401, "timestamp outside the allowed window")
        try:
            payload = loads_bounded(await request.body())
        except BodyError:
            return self._refuse(400, "body is not JSON")
        try:
            message = self._inbound(payload) if isinstance(payload, dict) else None
        except (AttributeError, TypeError, ValueError) as exc:
            return self._refuse(400, f"not a robot message: {exc!r}")
        if message is None:
            return _answer(200)
        msg_id = str(payload.get("msgId") or "")
        if msg_id and not await self.ctx.redis.set(message_seen_key(msg_id), 1, nx=True,
                                                   ex=SEEN_TTL_SEC):  # fmt: skip
            log.info("dingtalk message already handled", channel=self.name, msg_id=msg_id)
            return _answer(200)
        await self._remember(payload, message.sender_id)
        if not await self.receive_in_time(message, within=ANSWER_WITHIN_SEC):
            if msg_id:
                await self.ctx.redis.delete(message_seen_key(msg_id))
            return _answer(503, "not stored; try again")
        return _answer(200)

    def _refuse(self, status: int, reason: str) -> JSONResponse:
        log.warning("dingtalk push refused", channel=self.name, status=status, error=reason)
        return _answer(status, reason)

    def _inbound(self, payload: dict[str, Any]) -> InboundMessage | None:
        conversation = str(payload.get("conversationId") or "")
        if not conversation:
            return None
        if payload.get("conversationType") == GROUP and payload.get("isInAtList") is not True:
            return None  # a group message for someone else
        sender = str(payload.get("senderStaffId") or payload.get("senderId") or "")
        if sender and sender == payload.get("chatbotUserId"):
            return None
        text, media = _content(payload)
        if not text and not media:
            return None
        return InboundMessage(
            channel=self.name,
            chat_id=conversation,
            sender_id=sender,
            text=text,
            media=media,
            metadata={
                "platform_message_id": str(payload.get("msgId") or ""),
                "sender_name": str(payload.get("senderNick") or ""),
                "conversation_type": str(payload.get("conversationType") or ""),
                "group": payload.get("conversationType") == GROUP,
            },
        )

    async def _remember(self, payload: dict[str, Any], sender: str) -> None:
        """What a reply to this conversation needs, for whichever replica sends it."""
        key = conversation_key(str(payload["conversationId"]))
        fields = {"type": str(payload.get("conversationType") or SINGLE)}
        if payload.get("senderStaffId"):
            fields["staff_id"] = str(payload["senderStaffId"])
        webhook, expires = payload.get("sessionWebhook"), payload.get("sessionWebhookExpiredTime")
        if isinstance(webhook, str) and self._webhook_allowed(webhook) and isinstance(expires, int):
            fields.update(webhook=webhook, webhook_expires=str(expires))
        elif webhook:
            log.warning("sessionWebhook not on session_webhook_base: not used",
                        channel=self.name, chat_id=payload["conversationId"])  # fmt: skip
        await self.ctx.redis.hset(key, mapping=fields)
        await self.ctx.redis.expire(key, CONVERSATION_TTL_SEC)

    def _webhook_allowed(self, url: str) -> bool:
        base, given = urlsplit(self.config.session_webhook_base), urlsplit(url)
        return (given.scheme, given.netloc) == (base.scheme, base.netloc) and given.path.startswith(
            base.path
        )

    # -- sending ---------------------------------------------------------------------------

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        key = conversation_key(chat_id)
        conversation = await self.ctx.redis.hgetall(key)
        webhook = conversation.get("webhook", "")
        expires = int(conversation.get("webhook_expires") or 0)
        if webhook and expires - WEBHOOK_MARGIN_MS > time.time() * 1000:
            if await self._send_by_webhook(webhook, text, chat_id):
                return
            await self.ctx.redis.hdel(key, "webhook", "webhook_expires")
        group = conversation.get("type", GROUP if chat_id.startswith("cid") else SINGLE) == GROUP
        body: dict[str, Any] = {
            "robotCode": self.config.robot_code or self.config.client_id,
            "msgKey": "sampleText",
            "msgParam": json.dumps({"content": text}, ensure_ascii=False),
        }
        if group:
            await self._call(
                "/v1.0/robot/groupMessages/send", {**body, "openConversationId": chat_id}
            )
            return
        # A single chat: to the sender's staff id (a chat never seen: chat_id is a staff id).
        staff_id = conversation.get("staff_id") or ("" if conversation else chat_id)
        if not staff_id:
            raise SendError("no staff id known for this single chat", permanent=True)
        data = await self._call(
            "/v1.0/robot/oToMessages/batchSend", {**body, "userIds": [staff_id]}
        )
        if staff_id in (data.get("flowControlledStaffIdList") or []):
            raise SendError("DingTalk flow-controlled the user", retry_after=5.0)
        if staff_id in (data.get("invalidStaffIdList") or []):
            raise SendError(f"DingTalk calls staff id {staff_id} invalid", permanent=True)

    async def _send_by_webhook(self, webhook: str, text: str, chat_id: str) -> bool:
        """True: sent; False: the webhook refused it (expired, ...)."""
        try:
            response = await self.ctx.http.post(
                webhook, json={"msgtype": "text", "text": {"content": text}}
            )
        except httpx.HTTPError as exc:
            raise SendError(f"DingTalk unreachable: {exc!r}") from exc
        data = json_object(response)
        if response.status_code == 200 and data.get("errcode") == 0:
            return True
        if response.status_code == 429 or data.get("errcode") == WEBHOOK_RATE_LIMITED:
            raise SendError("DingTalk: sending too fast", retry_after=5.0)
        if response.status_code >= 500:
            raise SendError(f"DingTalk sessionWebhook answered HTTP {response.status_code}")
        log.warning("sessionWebhook refused; using the open API", channel=self.name,
                    chat_id=chat_id, error=str(data.get("errmsg", response.status_code)))  # fmt: skip
        return False

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One open API call with the access token (fetched again once if it is refused)."""
        for attempt in (1, 2):
            token = await self._tokens.get()
            try:
                response = await self.ctx.http.post(
                    self.config.api_base + path, json=body,
                    headers={"x-acs-dingtalk-access-token": token},
                )  # fmt: skip
            except httpx.HTTPError as exc:
                raise SendError(f"DingTalk unreachable: {exc!r}") from exc
            data = json_object(response)
            if response.status_code == 200:
                return data
            if response.status_code == 401 and attempt == 1:
                self._tokens.drop(token)
                continue
            raise _send_error(response, str(data.get("code", "")), str(data.get("message", "")))
        raise AssertionError("unreachable")

    async def _fetch_token(self) -> tuple[str, float]:
        """An access token and its lifetime (for ``self._tokens``)."""
        cfg = self.config
        try:
            response = await self.ctx.http.post(
                cfg.api_base + "/v1.0/oauth2/accessToken",
                json={"appKey": cfg.client_id, "appSecret": cfg.client_secret},
            )
        except httpx.HTTPError as exc:
            raise SendError(f"DingTalk unreachable: {exc!r}") from exc
        data = json_object(response)
        token, expire = data.get("accessToken"), data.get("expireIn")
        if response.status_code != 200 or not token or not isinstance(expire, int):
            raise SendError(f"no access token (HTTP {response.status_code}, "
                            f"{data.get('code', '')}: {data.get('message', '')})")  # fmt: skip
        return str(token), expire


def _send_error(response: httpx.Response, code: str, message: str) -> SendError:
    what = f"DingTalk answered HTTP {response.status_code}, {code}: {message[:200]}"
    if response.status_code == 429 or any(m in code for m in RATE_LIMIT_MARKERS):
        hint = response.headers.get("retry-after", "")
        return SendError(what, retry_after=float(hint) if is_ascii_number(hint) else 1.0)
    if response.status_code >= 500 or response.status_code == 401:
        return SendError(what)
    return SendError(what, permanent=True)


def _content(payload: dict[str, Any]) -> tuple[str, list[str]]:
    """(text, media references) of a pushed message."""
    kind = payload.get("msgtype")
    content = payload.get("content") if isinstance(payload.get("content"), dict) else {}
    if kind == "text":
        return str((payload.get("text") or {}).get("content", "")).strip(), []
    if kind == "audio":
        return str(content.get("recognition", "")).strip(), []
    if kind in ("picture", "file", "video") and content.get("downloadCode"):
        name = content.get("fileName") or kind
        return f"[{kind}: {name}]", [f"dingtalk:{kind}:{content['downloadCode']}"]
    if kind == "richText":
        parts, media = [], []
        for item in content.get("richText") or []:
            if isinstance(item, dict) and item.get("text"):
                parts.append(str(item["text"]))
            elif isinstance(item, dict) and item.get("downloadCode"):
                media.append(f"dingtalk:picture:{item['downloadCode']}")
        return "".join(parts).strip(), media
    return "", []
