"""The WhatsApp channel's bridge mode: one WebSocket to a WhatsApp Web bridge.

The bridge is a separate process that holds the WhatsApp Web session (nanobot's Node.js
bridge on Baileys, or ClawGo's on whatsmeow) and speaks JSON frames:

- in: ``{"type": "message", ...}`` (nanobot: ``id``, ``sender`` = the chat's JID, ``pn``,
  ``participant`` in groups, ``content``, ``timestamp``, ``isGroup``, ``media``; ClawGo:
  ``id``, ``from``, ``chat``, ``from_name``, ``content``, ``media``, ``is_group``), and
  ``status``, ``qr``, ``error``, ``sent`` frames, which are only logged;
- out: ``{"type": "send", "to", "text"}`` (nanobot) or ``{"type": "message", "to",
  "content", "reply_to_id"}`` (ClawGo), as ``bridge_protocol`` says; nanobot's bridge first
  wants ``{"type": "auth", "token"}`` when it was started with a ``BRIDGE_TOKEN``.

The connection is re-opened with backoff whenever the bridge goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from claw_ingress.bodies import BodyError, loads_bounded
from claw_ingress.cancel import stop_if_cancelled
from claw_ingress.channels.base import ChannelError, SendError
from claw_worker.config.channels import WhatsAppConfig
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

CHANNEL = "whatsapp"
OPEN_TIMEOUT_SEC = 10.0
MAX_BACKOFF_SEC = 60.0
STABLE_SEC = 10.0  # a connection that lived this long resets the backoff
BAD_TOKEN_CLOSE = 4003  # nanobot's bridge closes with this when the token is wrong
MAX_FRAME_BYTES = 4 * 1024 * 1024
STORE_RETRY_MAX_SEC = 30.0  # a message not stored is tried again, backing off to this


class WhatsAppBridge:
    def __init__(
        self,
        settings: Callable[[], WhatsAppConfig],
        receive: Callable[[InboundMessage], Awaitable[Any]],
    ) -> None:
        self._settings = settings  # the live config section, read per use
        self._receive = receive
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def connect(self) -> None:
        """Open the connection; :class:`ChannelError` when the bridge cannot be reached."""
        self._ws = await self._open()

    def run(
        self, background: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]
    ) -> None:
        """Read frames (and reconnect) in a task of its own (made by ``background``, the
        channel's: the manager restarts the channel if it ends), until :meth:`close`."""
        self._task = background(self._loop(), "bridge")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def send(self, chat_id: str, text: str, reply_to: str | None) -> None:
        ws = self._ws
        if ws is None:
            raise SendError("not connected to the WhatsApp bridge")
        if self._settings().bridge_protocol == "clawgo":
            frame: dict[str, Any] = {"type": "message", "to": chat_id, "content": text}
            if reply_to:
                frame["reply_to_id"] = reply_to
        else:
            frame = {"type": "send", "to": chat_id, "text": text}
        try:
            await ws.send(json.dumps(frame, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise SendError(f"the WhatsApp bridge connection closed: {exc}") from None

    async def _open(self) -> ClientConnection:
        cfg = self._settings()
        try:
            # proxy=None: the bridge is a sidecar, never reached through an HTTP proxy.
            ws = await connect(
                cfg.bridge_url, open_timeout=OPEN_TIMEOUT_SEC, proxy=None, max_size=MAX_FRAME_BYTES
            )
            if cfg.bridge_token:
                await ws.send(json.dumps({"type": "auth", "token": cfg.bridge_token}))
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ChannelError(
                f"cannot reach the WhatsApp bridge at {cfg.bridge_url}: {exc!r}"
            ) from None
        return ws

    async def _loop(self) -> None:
        delay = 1.0
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            ws = self._ws
            if ws is None:
                try:
                    ws = self._ws = await self._open()
                except ChannelError as exc:
                    log.warning(
                        "whatsapp bridge unreachable; retrying",
                        channel=CHANNEL,
                        error=str(exc),
                        retry_in=delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SEC)
                    continue
                log.info("whatsapp bridge reconnected", channel=CHANNEL)
            opened = time.monotonic()
            with contextlib.suppress(ConnectionClosed):
                async for frame in ws:
                    await self._on_frame(frame)
            self._ws = None
            if ws.close_code == BAD_TOKEN_CLOSE:
                log.error(
                    "the whatsapp bridge refused channels.whatsapp.bridge_token",
                    channel=CHANNEL,
                    error=ws.close_reason,
                )
            else:
                log.warning(
                    "whatsapp bridge connection closed; reconnecting",
                    channel=CHANNEL,
                    error=f"close code {ws.close_code}",
                    retry_in=delay,
                )
            if time.monotonic() - opened >= STABLE_SEC:
                delay = 1.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SEC)

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            data = loads_bounded(frame.encode() if isinstance(frame, str) else frame)
            kind = data.get("type")
            if kind == "message":
                message = bridge_message(data)
                if message is not None:
                    await self._store(message)
            elif kind == "status":
                log.info("whatsapp bridge status", channel=CHANNEL, status=str(data.get("status")))
            elif kind == "qr":
                log.warning(
                    "the whatsapp bridge needs a login: scan the QR code it shows", channel=CHANNEL
                )
            elif kind == "error":
                log.warning("whatsapp bridge error", channel=CHANNEL, error=str(data.get("error")))
        except (ValueError, AttributeError, TypeError, BodyError) as exc:
            log.warning("bad frame from the whatsapp bridge", channel=CHANNEL, error=repr(exc))
        except Exception as exc:  # Redis trouble, a bug: one frame lost, never the loop
            log.exception("whatsapp bridge frame failed", channel=CHANNEL, error=repr(exc))

    async def _store(self, message: InboundMessage) -> None:
        """Hand ``message`` over, trying again while Redis is away: the bridge sends a
        message once, so one not stored is lost. Frames behind it wait (the bridge is held
        back by the socket); its id makes a message stored twice count once."""
        delay = 1.0
        while True:
            try:
                await self._receive(message)
                return
            except (RedisError, OSError) as exc:
                log.warning("whatsapp bridge message not stored; retrying", channel=CHANNEL,
                            chat_id=message.chat_id, error=repr(exc), retry_in=delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_SEC)


def bridge_message(data: dict[str, Any]) -> InboundMessage | None:
    """A ``message`` frame of either bridge as an InboundMessage (None: nothing to say)."""
    chat_id = str(data.get("chat") or data.get("sender") or "")
    who = str(data.get("participant") or data.get("from") or data.get("pn") or chat_id)
    text = str(data.get("content") or "")
    media = [str(m) for m in data.get("media") or []]
    if not chat_id or not (text or media):
        return None
    return whatsapp_message(
        chat_id,
        who.split("@", 1)[0],
        str(data.get("id") or ""),
        text,
        media=media,
        name=str(data.get("from_name") or ""),
        group=data.get("is_group") is True or chat_id.endswith("@g.us"),
    )


def whatsapp_message(
    chat_id: str,
    sender_id: str,
    platform_id: str,
    text: str,
    *,
    media: list[str],
    name: str = "",
    quoted: str | None = None,
    group: bool = False,
) -> InboundMessage:
    """The InboundMessage of one WhatsApp message, whichever way it came. Its id is made
    from WhatsApp's, so a message delivered twice (a webhook retried, a bridge talking to
    two replicas) is stored once."""
    metadata: dict[str, Any] = {"platform_message_id": platform_id} if platform_id else {}
    if name:
        metadata["sender_name"] = name
    if group:
        metadata["group"] = True
    extra: dict[str, Any] = {}
    if platform_id:
        stable = f"{CHANNEL}:{platform_id}"
        if len(stable) > 128:
            stable = f"{CHANNEL}:" + hashlib.sha256(platform_id.encode()).hexdigest()
        extra["message_id"] = stable
    return InboundMessage(
        channel=CHANNEL,
        chat_id=chat_id,
        sender_id=sender_id,
        text=text,
        media=media,
        reply_to=quoted or None,
        metadata=metadata,
        **extra,
    )
