"""Discord: messages arrive over the Gateway (a websocket, ``_discord_gateway.py``), replies
go out over the REST API (v10).

``GET /gateway/bot`` gives the Gateway's URL and proves the token (401: a bad token, said
to the manager as a ``ChannelError``). MESSAGE_CREATE becomes an ``InboundMessage``: bots
(this one included) are ignored; a DM (no ``guild_id``) always goes on to the access policy;
a guild message only when it mentions the bot (``mentions``, or ``<@id>``/``<@!id>`` in the
text, which is cut out) or replies to one of its messages. The message id is derived from
Discord's, so an event replayed by a Resume is stored once; one that could not be stored
(Redis away) is not acknowledged, and the Gateway resumes so that Discord replays it.

Replies: ``POST /channels/{chat_id}/messages`` with ``allowed_mentions.parse = []`` (the
agent's text can never ping @everyone, a role or a user) and a ``message_reference`` to the
user's message. 429 → ``SendError(retry_after=)`` from the body's ``retry_after`` (seconds);
400/403/404 → permanent; the rest → retried by delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import httpx
import structlog
from redis.exceptions import RedisError

from claw_ingress.channels._discord_gateway import Gateway, NotHandled
from claw_ingress.channels.base import Channel, ChannelContext, ChannelError, SendError
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

USER_MESSAGE_TYPES = frozenset({0, 19})  # DEFAULT, REPLY (not joins, pins, ...)
TYPING_EVERY_SEC = 8.0  # Discord shows "typing" for 10 s per call
TYPING_MAX_SEC = 120.0
USER_AGENT = "DiscordBot (https://github.com/clawfleet, 0.1)"
SNOWFLAKE = re.compile(r"\d{1,20}")


class DiscordChannel(Channel):
    name = "discord"
    max_text = 2000

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._gateway: Gateway | None = None
        self._task: asyncio.Task[None] | None = None
        self._typing: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def check_config(self) -> None:
        if not self.config.token.strip():
            raise ChannelError("channels.discord.token is not set")

    async def start(self) -> None:
        url = await self._fetch_gateway_url()  # a bad token fails the start, said once
        self._gateway = Gateway(
            fetch_url=self._fetch_gateway_url, token=self.config.token.strip(),
            intents=self.config.intents, on_dispatch=self._on_dispatch, user_agent=USER_AGENT,
        )  # fmt: skip
        self._gateway.url = url
        self._task = self.background(self._gateway.run(), "gateway")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._typing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = self._gateway = None
        self._typing.clear()

    def describe(self) -> dict[str, Any]:
        gateway = self._gateway
        if gateway is None:
            return {"gateway": "stopped"}
        return {"gateway": gateway.state, "bot_user_id": gateway.user_id or None,
                "resumable": bool(gateway.session_id)}  # fmt: skip

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bot {self.config.token.strip()}", "User-Agent": USER_AGENT}

    async def _fetch_gateway_url(self) -> str:
        api = self.config.api_base
        try:
            resp = await self.ctx.http.get(f"{api}/gateway/bot", headers=self._headers())
        except httpx.HTTPError as exc:
            raise ChannelError(f"cannot reach Discord at {api}: {exc!r}") from exc
        if resp.status_code == 401:
            raise ChannelError("bad token: Discord refused channels.discord.token "
                               "(401 on GET /gateway/bot)")  # fmt: skip
        if resp.status_code != 200:
            raise ChannelError(f"GET /gateway/bot answered HTTP {resp.status_code}")
        try:
            data = resp.json()
            url, limit = str(data["url"]), data.get("session_start_limit") or {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ChannelError(f"GET /gateway/bot answered no gateway URL: {exc!r}") from exc
        if not url.startswith(("wss://", "ws://")):
            raise ChannelError(f"GET /gateway/bot answered a URL that is no websocket: {url}")
        if limit.get("remaining") == 0:
            raise ChannelError("Discord's daily session start limit is used up; it resets in "
                               f"{float(limit.get('reset_after') or 0) / 1000:.0f} s")  # fmt: skip
        return url

    # -- messages --------------------------------------------------------------------------

    async def _on_dispatch(self, kind: str, data: Any) -> None:
        if kind != "MESSAGE_CREATE" or not isinstance(data, dict):
            return
        try:
            message = self._inbound(data)
            if message is not None:
                await self.receive(message)
        except (RedisError, OSError) as exc:  # not stored: resumed and replayed later
            raise NotHandled(repr(exc)) from exc
        except Exception as exc:  # a malformed event, a bug: never the gateway
            log.error("discord message not accepted", channel=self.name,
                      chat_id=str(data.get("channel_id")), error=repr(exc))  # fmt: skip

    def _inbound(self, data: dict[str, Any]) -> InboundMessage | None:
        bot_id = self._gateway.user_id if self._gateway is not None else ""
        author = data.get("author") or {}
        sender_id = str(author.get("id") or "")
        if author.get("bot") or not sender_id or sender_id == bot_id:
            return None
        if data.get("type", 0) not in USER_MESSAGE_TYPES:
            return None
        text = str(data.get("content") or "")
        mention = re.compile(rf"\s*<@!?{re.escape(bot_id)}>\s*") if bot_id else None
        guild_id = data.get("guild_id")
        referenced = data.get("referenced_message") or {}
        if guild_id:
            mentioned = any(str(u.get("id")) == bot_id for u in data.get("mentions") or [])
            mentioned = mentioned or bool(mention and mention.search(text))
            replied = str((referenced.get("author") or {}).get("id")) == bot_id
            if not bot_id or not (mentioned or replied):
                return None
        if mention is not None:
            text = mention.sub(" ", text).strip()
        media = [str(a["url"]) for a in data.get("attachments") or [] if a.get("url")]
        if not text and not media:
            return None
        metadata: dict[str, Any] = {"platform_message_id": str(data["id"]),
                                    "sender_name": str(author.get("username") or "")}  # fmt: skip
        if guild_id:
            metadata["guild_id"] = str(guild_id)
            metadata["group"] = True
        return InboundMessage(
            message_id=f"discord-{data['id']}",  # a replayed event is stored once
            channel=self.name,
            chat_id=str(data["channel_id"]),
            sender_id=sender_id,
            text=text or "[attachment]",
            media=media,
            reply_to=str(referenced["id"]) if referenced.get("id") else None,
            metadata=metadata,
        )

    async def on_accepted(self, message: InboundMessage) -> None:
        """Show "typing..." in the chat until the reply goes out (at most TYPING_MAX_SEC)."""
        if message.message_id not in self._typing:
            task = asyncio.create_task(self._type(message.chat_id))
            self._typing[message.message_id] = task
            task.add_done_callback(lambda _t: self._typing.pop(message.message_id, None))

    async def on_delivered(self, message_id: str, chat_id: str) -> None:
        task = self._typing.pop(message_id, None)
        if task is not None:
            task.cancel()

    async def _type(self, chat_id: str) -> None:
        url = f"{self.config.api_base}/channels/{chat_id}/typing"
        loop = asyncio.get_running_loop()
        until = loop.time() + TYPING_MAX_SEC
        while loop.time() < until:
            try:
                await self.ctx.http.post(url, headers=self._headers())
            except httpx.HTTPError:
                return  # only a courtesy
            await asyncio.sleep(TYPING_EVERY_SEC)

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        if not SNOWFLAKE.fullmatch(chat_id):
            raise SendError(f"not a Discord channel id: {chat_id[:40]!r}", permanent=True)
        body: dict[str, Any] = {"content": text, "allowed_mentions": {"parse": []}}
        if reply_to and SNOWFLAKE.fullmatch(reply_to):
            # Quoted if it still exists; sent unquoted (not refused) if it was deleted.
            body["message_reference"] = {"message_id": reply_to, "fail_if_not_exists": False}
        url = f"{self.config.api_base}/channels/{chat_id}/messages"
        try:
            resp = await self.ctx.http.post(url, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise SendError(f"cannot reach Discord: {exc!r}") from exc
        status = resp.status_code
        if status < 300:
            return
        detail = f"HTTP {status}: {resp.text[:200]}"
        if status == 429:
            raise SendError(f"rate limited ({detail})", retry_after=_retry_after(resp))
        if status in (400, 403, 404):  # invalid message, no access to the channel, none such
            raise SendError(f"Discord refused the message ({detail})", permanent=True)
        raise SendError(f"Discord failed ({detail})")


def _retry_after(resp: httpx.Response) -> float:
    """Seconds to wait: the body's ``retry_after`` (Discord's own, a float), else the
    ``Retry-After`` / ``X-RateLimit-Reset-After`` headers (a Cloudflare 429 has no JSON)."""
    candidates: list[Any] = []
    with contextlib.suppress(ValueError, AttributeError):
        candidates.append(resp.json().get("retry_after"))
    candidates += [resp.headers.get("Retry-After"), resp.headers.get("X-RateLimit-Reset-After")]
    for value in candidates:
        with contextlib.suppress(TypeError, ValueError):
            if float(value) >= 0:
                return float(value)
    return 1.0
