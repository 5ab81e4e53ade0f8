"""WhatsApp, in one of two modes (``channels.whatsapp.mode``).

**cloud**: the WhatsApp Business Cloud API. Meta checks the callback URL once with a GET
(``hub.mode=subscribe``, ``hub.verify_token``, ``hub.challenge``: the challenge is echoed as
plain text when the token matches, else 403) and then POSTs notifications to
``/webhooks/whatsapp/``, each signed in ``X-Hub-Signature-256`` (``sha256=`` + the hex
HMAC-SHA256 of the raw body, keyed by the app secret; a request without a valid one gets
401). A message whose ``timestamp`` is outside ``max_clock_skew_sec`` (1 day) is dropped
(a replay); one sent again within it has the same id and is stored once. Messages are in ``entry[].changes[].value.messages[]``; ``statuses[]`` (sent,
delivered, read, failed) are not messages: only failures are logged. Replies go to
``POST {api_base}/{phone_number_id}/messages``, quoting the user's message through
``context.message_id``.

**bridge**: a WhatsApp Web bridge reached over a WebSocket (``_whatsapp_bridge.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from claw_ingress.bodies import BodyError, loads_bounded
from claw_ingress.channels._http import retry_after
from claw_ingress.channels._whatsapp_bridge import WhatsAppBridge, whatsapp_message
from claw_ingress.channels.base import (
    Channel,
    ChannelContext,
    ChannelError,
    SendError,
    within_clock_skew,
)
from claw_worker.config.channels import WhatsAppConfig
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

# Graph API error codes: wait and send again (throughput, app and account rate limits,
# the pair rate of about one message per 6 s to one user) ...
RETRY_CODES = {4, 80007, 130429, 131048, 131056}
PAIR_RATE_CODE, PAIR_RATE_WAIT_SEC, RATE_WAIT_SEC = 131056, 6.0, 2.0
# ... or give up: outside the 24-hour window (131047), not a WhatsApp user (131026), not in
# a test number's allowed list (131030), a bad parameter or message type.
PERMANENT_CODES = {100, 131008, 131009, 131021, 131026, 131030, 131047, 131051, 131052}
# Any other refusal (HTTP 400) is permanent too, except these: an unknown or temporary
# error, and a token or permission problem the operator can fix (then it goes out).
LATER_CODES = {0, 1, 2, 10, 190, 131000, 131016, *range(200, 300)}
TOKEN_CODES = {0, 190}  # the access token is invalid or expired
MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")


class WhatsAppChannel(Channel):
    name = "whatsapp"
    max_text = 4096

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self.bridge = WhatsAppBridge(lambda: self.config, self.receive)

    @property
    def config(self) -> WhatsAppConfig:
        return self.ctx.live.config.channels.whatsapp

    def check_config(self) -> None:
        cfg = self.config
        missing = cfg.missing()
        if missing:
            raise ChannelError(f"channels.whatsapp ({cfg.mode} mode) needs {', '.join(missing)}")
        # (bridge_url's scheme and host are checked when the config is read)

    async def start(self) -> None:
        if self.config.mode == "cloud":
            await self._check_credentials()
            return
        await self.bridge.connect()
        log.info("whatsapp bridge connected", channel=self.name)
        self.bridge.run(self.background)

    async def start_sending(self) -> None:
        if self.config.mode == "bridge":
            await self.bridge.connect()

    async def stop(self) -> None:
        await self.bridge.close()

    def describe(self) -> dict[str, Any]:
        if self.config.mode == "bridge":
            return {"mode": "bridge", "bridge_connected": self.bridge.connected}
        return {"mode": "cloud"}

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        if self.config.mode == "bridge":
            await self.bridge.send(chat_id, text, reply_to)
        else:
            await self._cloud_send(chat_id, text, reply_to)

    # -- cloud: webhooks in --------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        if self.config.mode != "cloud":
            return []
        return [
            Route("/", self._verify, methods=["GET"]),
            Route("/", self._notify, methods=["POST"]),
        ]

    async def _verify(self, request: Request) -> Response:
        query = request.query_params
        given = query.get("hub.verify_token", "").encode()
        expected = self.config.verify_token.encode()
        if (
            query.get("hub.mode") == "subscribe"
            and expected
            and hmac.compare_digest(given, expected)
        ):
            log.info("whatsapp webhook verified", channel=self.name)
            return PlainTextResponse(query.get("hub.challenge", ""))
        log.warning(
            "whatsapp webhook verification refused",
            channel=self.name,
            error="wrong hub.mode or hub.verify_token",
        )
        return PlainTextResponse("forbidden", status_code=403)

    async def _notify(self, request: Request) -> Response:
        body = await request.body()
        if not signature_ok(
            self.config.app_secret, body, request.headers.get("x-hub-signature-256", "")
        ):
            log.warning(
                "whatsapp notification refused",
                channel=self.name,
                error="missing or wrong X-Hub-Signature-256",
            )
            return JSONResponse({"error": "bad signature"}, status_code=401)
        try:
            payload = loads_bounded(body)
            values = [
                change["value"]
                for entry in payload.get("entry", [])
                for change in entry.get("changes", [])
                if change.get("field") == "messages"
            ]
        except (ValueError, TypeError, KeyError, AttributeError, BodyError):
            return JSONResponse({"error": "not a WhatsApp notification"}, status_code=400)
        try:
            for value in values:
                await self._on_value(value)
        except (AttributeError, TypeError) as exc:
            log.warning("bad whatsapp notification", channel=self.name, error=repr(exc))
            return JSONResponse({"error": "not a WhatsApp notification"}, status_code=400)
        except RedisError as exc:  # Meta delivers the notification again later
            log.error("whatsapp notification not stored", channel=self.name, error=str(exc))
            return JSONResponse({"error": "try again later"}, status_code=503)
        return Response(status_code=200)

    async def _on_value(self, value: dict[str, Any]) -> None:
        """One change of a notification. Its messages are taken one by one: one of the wrong
        shape is logged and skipped, so that it neither loses the others nor makes Meta send
        the whole batch again (Redis trouble still fails it: a 503, sent again)."""
        number = str(_dig(value, "metadata", "phone_number_id") or "")
        if number and number != self.config.phone_number_id:
            log.info("whatsapp notification for another number ignored", channel=self.name)
            return
        for status in _list(value.get("statuses")):
            if _dig(status, "status") == "failed":
                log.warning(
                    "whatsapp could not deliver a message",
                    channel=self.name,
                    chat_id=str(_dig(status, "recipient_id")),
                    error=[_dig(e, "code") for e in _list(_dig(status, "errors"))],
                )
        contacts = _list(value.get("contacts"))
        names = {_dig(c, "wa_id"): str(_dig(c, "profile", "name") or "") for c in contacts}
        for message in _list(value.get("messages")):
            try:
                if self._stale(message):
                    continue
                inbound = self._cloud_inbound(message, names)
                if inbound is not None:
                    await self.receive(inbound)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                log.warning("whatsapp message skipped: not of the documented shape",
                            channel=self.name, error=repr(exc)[:300])  # fmt: skip

    def _stale(self, msg: dict[str, Any]) -> bool:
        """Whether a message's own ``timestamp`` is missing or outside the replay window
        (``max_clock_skew_sec``): then it is dropped, said in the log."""
        stamp = str(msg.get("timestamp", ""))
        if within_clock_skew(stamp, self.config.max_clock_skew_sec):
            return False
        log.warning("whatsapp message dropped: its timestamp is missing or too far from now "
                    "(a replay?)", channel=self.name, timestamp=stamp[:20],
                    sender_id=str(msg.get("from", ""))[:40])  # fmt: skip
        return True

    def _cloud_inbound(self, msg: dict[str, Any], names: dict[str, str]) -> InboundMessage | None:
        kind = msg.get("type", "")
        sender, platform_id = str(msg.get("from", "")), str(msg.get("id", ""))
        text, media = "", []
        if kind == "text":
            text = _dig(msg, "text", "body") or ""
        elif kind in MEDIA_TYPES:
            item = _dig(msg, kind) or {}
            media = [f"whatsapp:{kind}:{item.get('id', '')}"]
            label = f"{kind}: {item['filename']}" if item.get("filename") else kind
            text = item.get("caption") or f"[{label}]"
        elif kind == "button":
            text = _dig(msg, "button", "text") or ""
        elif kind == "interactive":
            reply = next(iter((_dig(msg, "interactive") or {}).values()), {})
            text = reply.get("title", "") if isinstance(reply, dict) else ""
        elif kind == "location":
            place = _dig(msg, "location") or {}
            text = f"[location: {place.get('latitude')}, {place.get('longitude')}]"
        if not sender or not platform_id or not (text or media):
            log.info("whatsapp message ignored", channel=self.name, kind=kind, sender_id=sender)
            return None
        return whatsapp_message(
            sender,
            sender,
            platform_id,
            text,
            media=media,
            name=names.get(sender, ""),
            quoted=_dig(msg, "context", "id"),
        )

    # -- cloud: the Graph API out --------------------------------------------------------

    async def _check_credentials(self) -> None:
        cfg = self.config
        try:
            resp = await self.ctx.http.get(
                f"{cfg.api_base}/{cfg.phone_number_id}",
                headers=self._auth(),
                params={"fields": "id"},
            )
        except httpx.HTTPError as exc:
            raise ChannelError(f"cannot reach the Graph API at {cfg.api_base}: {exc!r}") from None
        if resp.status_code == 200:
            return
        code, what = _graph_error(resp)
        if resp.status_code == 401 or code in TOKEN_CODES:
            raise ChannelError(f"the Graph API refused channels.whatsapp.access_token ({what})")
        # A token allowed to send but not to read the number (no whatsapp_business_management)
        # still works: said, not fatal.
        log.warning("whatsapp phone number not readable", channel=self.name, error=what)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.access_token}"}

    async def _cloud_send(self, chat_id: str, text: str, reply_to: str | None) -> None:
        cfg = self.config
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": chat_id,
            "type": "text",
            "text": {"body": text},
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        try:
            resp = await self.ctx.http.post(
                f"{cfg.api_base}/{cfg.phone_number_id}/messages", json=body, headers=self._auth()
            )
        except httpx.HTTPError as exc:
            raise SendError(f"cannot reach the Graph API: {exc!r}") from None
        if resp.status_code == 200:
            return
        code, what = _graph_error(resp)
        if resp.status_code == 429 or code in RETRY_CODES:
            default = PAIR_RATE_WAIT_SEC if code == PAIR_RATE_CODE else RATE_WAIT_SEC
            raise SendError(what, retry_after=retry_after(resp, default))
        if code in PERMANENT_CODES or (resp.status_code == 400 and code not in LATER_CODES):
            raise SendError(what, permanent=True)
        raise SendError(what)


def signature_ok(app_secret: str, body: bytes, header: str) -> bool:
    """``header`` is ``sha256=`` + the hex HMAC-SHA256 of ``body`` under ``app_secret``."""
    if not app_secret:
        return False
    expected = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode("latin-1"))


def _dig(value: Any, *path: str) -> Any:
    """``value[path[0]][path[1]]...``, or None where a step is missing or not an object."""
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _graph_error(resp: httpx.Response) -> tuple[int | None, str]:
    """A refusal's Graph error code, and what to say of it."""
    try:
        error = resp.json().get("error", {})
        raw = error.get("code")
        code, message = (int(raw) if raw is not None else None), str(error.get("message", ""))
    except (ValueError, AttributeError, TypeError):
        code, message = None, resp.text
    return code, f"HTTP {resp.status_code}, code {code}: {message[:300]}"
