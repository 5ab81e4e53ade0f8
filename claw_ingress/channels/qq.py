"""QQ: the official QQ bot API (q.qq.com), events pushed to ``/webhooks/qq/``.

Every callback is signed with Ed25519. The key pair comes from the bot secret: the seed is
the secret repeated until it has 32 bytes, cut to 32. A callback carries
``X-Signature-Ed25519`` (hex) over ``X-Signature-Timestamp`` + the raw body; one without a
valid signature, or stamped more than ``max_clock_skew_sec`` (300 s) from now, gets 401; a
callback delivered again is stored once (its message id).

- op 13 (the callback URL check): ``d = {plain_token, event_ts}``, answered with
  ``{plain_token, signature}``, the signature (hex) over ``event_ts + plain_token``;
- op 0 (an event): ``C2C_MESSAGE_CREATE`` (``author.user_openid``) and
  ``GROUP_AT_MESSAGE_CREATE`` (``group_openid``, ``author.member_openid``) become messages
  for chats ``c2c:<openid>`` and ``group:<group_openid>``; answered ``{"op": 12, "d": 0}``
  (``d: 1`` asks QQ to deliver it again).

Replies go to ``POST {api_base}/v2/users/{openid}/messages`` or
``/v2/groups/{group_openid}/messages`` with ``Authorization: QQBot <access token>`` (from
``token_url``, cached until a minute before it expires). QQ only takes passive replies: each
carries the ``msg_id`` of the user's message (valid 60 min in C2C, 5 min in groups) and a
``msg_seq`` unique per ``msg_id``; parts after the first (sent without ``reply_to``) reuse
the chat's latest message id, kept in Redis so any ingress replica can send them.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import httpx
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from claw_ingress.bodies import BodyError, loads_bounded
from claw_ingress.channels._http import retry_after
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
from claw_worker.config.channels import QQConfig
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

TOKEN_MARGIN_SEC = 60.0  # QQ hands out a new token in the last minute of the old one
REPLY_WINDOW_SEC = {"c2c": 3600, "group": 300}  # how long a message can be replied to
EVENTS = {"C2C_MESSAGE_CREATE": "c2c", "GROUP_AT_MESSAGE_CREATE": "group"}
SEND_PATHS = {"c2c": "/v2/users/{}/messages", "group": "/v2/groups/{}/messages"}
RATE_CODES = {22009, 20028}  # sending too often
# The message being replied to is wrong, too old or not the bot's to answer; the text or
# a URL in it is refused: sending again will not help.
PERMANENT_CODES = {304003, 304026, 304027, 304028, 50006}


# KEYS: the chat's reply pointer   ARGV: the message id set, the one it replaced ("" none),
# ttl_sec. Puts the replaced id back, unless another message moved the pointer meanwhile.
RESTORE_POINTER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
"""


def reply_key(chat_id: str) -> str:
    """STRING: the platform id of the chat's latest message (TTL: the reply window)."""
    return k.channel_state_key("qq", "reply", chat_id)


def seq_key(msg_id: str) -> str:
    """INCR: the msg_seq of the next reply to ``msg_id``."""
    return k.channel_state_key("qq", "seq", msg_id)


@functools.lru_cache(maxsize=4)
def signing_key(secret: str) -> Ed25519PrivateKey:
    """The bot's Ed25519 key: the seed is ``secret`` repeated to 32 bytes."""
    seed = secret.encode()
    while len(seed) < 32:
        seed *= 2
    return Ed25519PrivateKey.from_private_bytes(seed[:32])


def sign(secret: str, message: bytes) -> str:
    return signing_key(secret).sign(message).hex()


def signature_ok(secret: str, timestamp: str, body: bytes, signature_hex: str) -> bool:
    try:
        signature = bytes.fromhex(signature_hex)
        signing_key(secret).public_key().verify(signature, timestamp.encode() + body)
    except (ValueError, InvalidSignature):
        return False
    return True


class QQChannel(Channel):
    name = "qq"
    max_text = 2000

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._tokens = TokenCache(self._fetch_token, margin_sec=TOKEN_MARGIN_SEC)

    @property
    def config(self) -> QQConfig:
        return self.ctx.live.config.channels.qq

    def check_config(self) -> None:
        missing = self.config.missing()
        if missing:
            raise ChannelError(f"channels.qq needs {', '.join(missing)}")

    async def start(self) -> None:
        await self._tokens.get()  # refused credentials fail here, said once

    def describe(self) -> dict[str, Any]:
        return {"access_token_cached": self._tokens.cached}

    # -- callbacks in --------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [Route("/", self._callback, methods=["POST"])]

    async def _callback(self, request: Request) -> Response:
        body = await request.body()
        problem = self._forged(request.headers, body)
        if problem:
            log.warning("qq callback refused", channel=self.name, error=problem)
            return JSONResponse({"error": "bad signature"}, status_code=401)
        try:
            payload = loads_bounded(body)
            op, data = payload.get("op"), payload.get("d")
            if op == 13:
                plain, event_ts = str(data["plain_token"]), str(data["event_ts"])
                signature = sign(self.config.secret, (event_ts + plain).encode())
                log.info("qq callback URL validated", channel=self.name)
                return JSONResponse({"plain_token": plain, "signature": signature})
            if op == 0:
                await self._dispatch(str(payload.get("t", "")), data, str(payload.get("id", "")))
        except (ValueError, TypeError, KeyError, AttributeError, BodyError) as exc:
            log.warning("bad qq callback", channel=self.name, error=repr(exc))
            return JSONResponse({"error": "not a QQ callback"}, status_code=400)
        except RedisError as exc:
            log.error(
                "qq event not stored; QQ will send it again", channel=self.name, error=str(exc)
            )
            return JSONResponse({"op": 12, "d": 1})
        return JSONResponse({"op": 12, "d": 0})

    def _forged(self, headers: Headers, body: bytes) -> str:
        """Why the callback is not QQ's ("" when it is)."""
        timestamp = headers.get("x-signature-timestamp", "")
        signature = headers.get("x-signature-ed25519", "")
        if not is_ascii_number(timestamp) or not signature:
            return "missing X-Signature-Timestamp or X-Signature-Ed25519"
        if not within_clock_skew(timestamp, self.config.max_clock_skew_sec):
            return f"X-Signature-Timestamp {timestamp} is too far from now"
        app_id = headers.get("x-bot-appid")
        if app_id is not None and app_id != self.config.app_id:
            return "X-Bot-Appid is another bot's"
        if not signature_ok(self.config.secret, timestamp, body, signature):
            return "wrong X-Signature-Ed25519"
        return ""

    async def _dispatch(self, event: str, data: dict[str, Any], event_id: str) -> None:
        kind = EVENTS.get(event)
        if kind is None:
            log.info("qq event ignored", channel=self.name, event=event)
            return
        author = data.get("author") or {}
        if kind == "c2c":
            sender = str(author.get("user_openid", ""))
            chat_id = f"c2c:{sender}"
        else:
            sender = str(author.get("member_openid", ""))
            chat_id = f"group:{data.get('group_openid', '')}"
        msg_id = str(data.get("id", ""))
        text = str(data.get("content") or "").strip()
        media = [_url(a["url"]) for a in data.get("attachments") or [] if a.get("url")]
        if not msg_id or not sender or chat_id.endswith(":") or not (text or media):
            log.info("qq message ignored", channel=self.name, chat_id=chat_id, sender_id=sender)
            return
        # Later parts of a long reply, and replies nothing quotes, answer the chat's latest
        # message (set first: a command's answer may go out before receive returns).
        pointer, ttl = reply_key(chat_id), REPLY_WINDOW_SEC[kind]
        previous = await self.ctx.redis.set(pointer, msg_id, ex=ttl, get=True)
        stable = f"qq:{msg_id}"  # a callback QQ sends again is stored once
        if len(stable) > 128:
            stable = "qq:" + hashlib.sha256(msg_id.encode()).hexdigest()
        metadata = {"platform_message_id": msg_id, "event_id": event_id, "group": kind == "group"}
        accepted = await self.receive(
            InboundMessage(
                message_id=stable,
                channel=self.name,
                chat_id=chat_id,
                sender_id=sender,
                text=text or "[attachment]",
                media=media,
                metadata=metadata,
            )
        )
        if accepted.status not in ("queued", "command"):  # a refused stranger's, a duplicate
            await self.ctx.redis.eval(RESTORE_POINTER, 1, pointer, msg_id, previous or "", ttl)

    # -- replies out ---------------------------------------------------------------------

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        kind, _, target = chat_id.partition(":")
        if kind not in SEND_PATHS or not target:
            raise SendError(
                f"not a QQ chat id: {chat_id!r} (c2c:<openid> or group:<openid>)", permanent=True
            )
        body: dict[str, Any] = {"content": text, "msg_type": 0}
        msg_id = reply_to or await self.ctx.redis.get(reply_key(chat_id))
        if msg_id:
            async with self.ctx.redis.pipeline(transaction=False) as pipe:
                pipe.incr(seq_key(msg_id))
                pipe.expire(seq_key(msg_id), REPLY_WINDOW_SEC["c2c"])
                seq, _ = await pipe.execute()
            body.update(msg_id=msg_id, msg_seq=int(seq))
        try:
            token = await self._tokens.get()
        except ChannelError as exc:
            raise SendError(str(exc)) from None
        url = self.config.api_base + SEND_PATHS[kind].format(target)
        try:
            resp = await self.ctx.http.post(
                url, json=body, headers={"Authorization": f"QQBot {token}"}
            )
        except httpx.HTTPError as exc:
            raise SendError(f"cannot reach the QQ API: {exc!r}") from None
        if resp.status_code in (200, 201, 202, 204):
            return
        code, message = _error(resp)
        what = f"HTTP {resp.status_code}, code {code}: {message}"
        if resp.status_code == 401:
            self._tokens.drop(token)  # fetch a new one for the next try
            raise SendError(what)
        if resp.status_code == 429 or code in RATE_CODES:
            raise SendError(what, retry_after=retry_after(resp))
        if code in PERMANENT_CODES or resp.status_code in (400, 403, 404):
            raise SendError(what, permanent=True)
        raise SendError(what)

    async def _fetch_token(self) -> tuple[str, float]:
        """An access token and its lifetime (for ``self._tokens``)."""
        cfg = self.config
        try:
            resp = await self.ctx.http.post(
                cfg.token_url, json={"appId": cfg.app_id, "clientSecret": cfg.secret}
            )
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChannelError(f"cannot get a QQ access token: {exc!r}") from None
        token = data.get("access_token") if isinstance(data, dict) else None
        if resp.status_code != 200 or not token:
            code, message = _error(resp)
            raise ChannelError(
                f"QQ refused app_id/secret (HTTP {resp.status_code}, code {code}): {message}"
            )
        try:
            expires_in = float(data.get("expires_in") or 7200)  # QQ sends it as a string
        except ValueError:
            expires_in = 7200.0
        log.info("qq access token fetched", channel=self.name, expires_in=expires_in)
        return str(token), expires_in


def _url(value: str) -> str:
    return value if "://" in value else "https://" + value.lstrip("/")


def _error(resp: httpx.Response) -> tuple[Any, str]:
    try:
        data = resp.json()
        return data.get("code", data.get("err_code")), str(data.get("message", ""))[:300]
    except (ValueError, AttributeError):
        return None, resp.text[:300]
