"""Telegram: the Bot API through python-telegram-bot's ``Bot`` (no ``telegram.ext``).

Updates come by long polling (``getUpdates`` with an offset; network trouble, 5xx and 409s
are waited out with backoff) or, with ``mode: webhook``, as POSTs to ``/webhooks/telegram/``
carrying the ``X-Telegram-Bot-Api-Secret-Token`` given to ``setWebhook`` (compared in
constant time; anything else is a 401); a webhook message dated further than
``max_clock_skew_sec`` (1 day) from now is dropped as a replay. Start-up calls ``getMe``: a refused token is a
:class:`ChannelError` saying so, retried by the manager. What of an update becomes an
``InboundMessage`` (text, media references, group mentions) is ``_telegram_messages.py``.

Replies go out as MarkdownV2 (``_telegram_markdown.py`` turns the model's Markdown into it);
a text Telegram refuses is sent again as plain text. While a chat has a message being
answered it shows "typing" (``sendChatAction`` every ``TYPING_EVERY_SEC``) until the reply
went out, the message finished elsewhere, or ``TYPING_MAX_SEC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from telegram import Bot, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from claw_ingress.bodies import BodyError, read_json
from claw_ingress.cancel import stop_if_cancelled
from claw_ingress.channels._telegram_markdown import to_markdown_v2, utf16_length
from claw_ingress.channels._telegram_messages import (
    message_of,
    poll_problem,
    read_update,
    read_updates,
    retry_after,
)
from claw_ingress.channels.base import (
    Channel,
    ChannelContext,
    ChannelError,
    SendError,
    is_ascii_number,
    within_clock_skew,
)
from claw_ingress.client_addr import scope_client_address
from claw_worker import constants as k
from claw_worker.config.channels import TelegramConfig
from claw_worker.contract import InboundMessage, MessageStatus

log = structlog.get_logger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"
ALLOWED_UPDATES = ("message",)
MAX_POLL_BACKOFF_SEC = 60.0
POLL_READ_MARGIN_SEC = 10.0  # a long poll's read timeout: its own timeout and this
TYPING_EVERY_SEC = 4.0  # Telegram shows an action for 5 s at most
TYPING_MAX_SEC = 600.0  # a message whose reply never comes stops the indicator after this
FINISHED = frozenset(s.value for s in MessageStatus if s.finished)


@dataclass
class _Typing:
    """One chat's "typing" indicator, shown while any of ``pending`` is being answered."""

    pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> session, since
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # an action never crosses a send
    last_sent: float = 0.0  # monotonic time of our last message to the chat
    task: asyncio.Task[None] | None = None


class TelegramChannel(Channel):
    name = "telegram"
    max_text = 4096  # UTF-16 code units of the text as shown (after MarkdownV2 is parsed)
    text_length = staticmethod(utf16_length)

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._bot: Bot | None = None
        self._poller: asyncio.Task[None] | None = None
        self._typing: dict[str, _Typing] = {}

    @property
    def config(self) -> TelegramConfig:
        return self.ctx.live.config.channels.telegram

    def check_config(self) -> None:
        cfg = self.config
        if not cfg.token:
            raise ChannelError("channels.telegram.token is not set (a bot token from @BotFather)")
        if cfg.mode == "webhook" and not (cfg.webhook_url and cfg.webhook_secret):
            raise ChannelError(
                "webhook mode needs channels.telegram.webhook_url (the public URL of "
                "/webhooks/telegram/) and channels.telegram.webhook_secret"
            )

    # -- lifecycle -------------------------------------------------------------------------

    async def start_sending(self) -> None:
        """Connect the Bot (``getMe``): enough for :meth:`send`."""
        if self._bot is not None:
            return
        cfg = self.config
        bot = Bot(
            cfg.token,
            base_url=f"{cfg.api_base}/bot",
            base_file_url=f"{cfg.api_base}/file/bot",
            request=HTTPXRequest(connection_pool_size=8, read_timeout=20.0),
            get_updates_request=HTTPXRequest(connection_pool_size=1, read_timeout=10.0),
        )
        try:
            await bot.initialize()
        except InvalidToken as exc:
            await bot.shutdown()
            # PTB's own message quotes the token: say what the server answered instead.
            said = str(exc.__cause__ or "Unauthorized")
            raise ChannelError(
                f"the Bot API at {cfg.api_base} refused the bot token (getMe: {said}); "
                "check channels.telegram.token"
            ) from None
        except TelegramError as exc:
            await bot.shutdown()
            raise ChannelError(f"getMe at {cfg.api_base} failed: {exc}") from None
        self._bot = bot

    async def start(self) -> None:
        await self.start_sending()
        bot, cfg = self._require_bot(), self.config
        try:
            if cfg.mode == "webhook":
                # The route is .../telegram/: Telegram would not follow the redirect.
                url = cfg.webhook_url
                url += "/" if url.endswith("/webhooks/telegram") else ""
                await bot.set_webhook(
                    url, secret_token=cfg.webhook_secret,
                    allowed_updates=list(ALLOWED_UPDATES),
                )  # fmt: skip
            else:  # getUpdates answers 409 while a webhook is set
                await bot.delete_webhook(drop_pending_updates=False)
        except TelegramError as exc:
            call = "setWebhook" if cfg.mode == "webhook" else "deleteWebhook"
            raise ChannelError(f"{call} failed: {exc}") from None
        if cfg.mode == "polling":
            self._poller = self.background(self._poll(bot), "poll")
        log.info("telegram bot connected", channel=self.name, bot=f"@{bot.username}",
                 mode=cfg.mode)  # fmt: skip

    async def stop(self) -> None:
        tasks = [self._poller] + [t.task for t in self._typing.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._poller = None
        self._typing.clear()
        if self._bot is not None:
            bot, self._bot = self._bot, None
            await bot.shutdown()

    def describe(self) -> dict[str, Any]:
        bot = self._bot
        return {
            "mode": self.config.mode,
            "bot": f"@{bot.username}" if bot is not None else None,
            "typing_chats": len(self._typing),
        }

    def _require_bot(self) -> Bot:
        if self._bot is None:
            raise SendError("telegram is not connected")
        return self._bot

    # -- receiving -------------------------------------------------------------------------

    async def _poll(self, bot: Bot) -> None:
        """Long-poll ``getUpdates`` until cancelled; the offset moves past an update only
        once it was handled (a Redis outage holds it, and it is fetched again)."""
        offset: int | None = None
        delay, problem = 1.0, ""
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            try:
                updates = read_updates(await self._get_updates(bot, offset), bot)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, 5xx, 409 (another poller), a revoked token
                reason = poll_problem(exc)
                wait = retry_after(exc) or delay
                if reason != problem:
                    log.warning("telegram polling failed; retrying", channel=self.name,
                                error=reason, retry_in=wait)  # fmt: skip
                problem = reason
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_POLL_BACKOFF_SEC)
                continue
            if problem:
                log.info("telegram polling recovered", channel=self.name)
            delay, problem = 1.0, ""
            for update_id, update in updates:
                if update is not None and not await self._dispatch(update):
                    await asyncio.sleep(1.0)
                    break
                offset = update_id + 1

    async def _get_updates(self, bot: Bot, offset: int | None) -> Any:
        """``getUpdates``' result as JSON (:func:`read_updates` reads it update by update)."""
        timeout = self.config.poll_timeout_sec
        params: dict[str, Any] = {"timeout": timeout, "allowed_updates": list(ALLOWED_UPDATES)}
        if offset is not None:
            params["offset"] = offset
        with warnings.catch_warnings():  # "use Bot.get_updates": it reads the batch whole
            warnings.simplefilter("ignore", PTBUserWarning)
            return await bot.do_api_request("getUpdates", api_kwargs=params,
                                            read_timeout=POLL_READ_MARGIN_SEC + timeout)  # fmt: skip

    async def _dispatch(self, update: Update) -> bool:
        """Hand an update to the fleet: False when it should be fetched again later."""
        bot = self._bot
        inbound = message_of(update, bot.bot, self.name) if bot is not None else None
        if inbound is None:
            return True
        try:
            await self.receive(inbound)
        except (RedisError, OSError) as exc:
            log.warning("telegram message not stored; retrying", channel=self.name,
                        chat_id=inbound.chat_id, error=repr(exc))  # fmt: skip
            return False
        except Exception as exc:  # a bug must not wedge the poll on one update
            log.exception("telegram update dropped", channel=self.name,
                          chat_id=inbound.chat_id, error=repr(exc))  # fmt: skip
        return True

    def routes(self) -> list[BaseRoute]:
        if self.config.mode != "webhook":
            return []
        return [Route("/", self._webhook, methods=["POST"])]

    async def _webhook(self, request: Request) -> JSONResponse:
        expected = self.config.webhook_secret.encode()
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not expected or not hmac.compare_digest(given, expected):
            trusted = self.ctx.live.config.gateway.trusted_proxies
            log.warning("telegram webhook refused: wrong secret token", channel=self.name,
                        client=scope_client_address(request.scope, trusted) or "")  # fmt: skip
            return JSONResponse({"error": "wrong secret token"}, status_code=401)
        bot = self._bot
        if bot is None:
            return JSONResponse({"error": "telegram is starting"}, status_code=503)
        try:
            data = await read_json(request, self.ctx.live.config.gateway.max_body_bytes)
        except BodyError as exc:
            return JSONResponse(exc.payload, status_code=exc.status)
        # Telegram (the secret proves it) repeats whatever is not a 2xx, and holds back the
        # updates after it: one that cannot be read is taken (logged), not refused.
        update = read_update(data, bot)
        if update is None:
            return JSONResponse({"ok": True, "dropped": "not a Telegram update"})
        if self._stale(update):  # answered 200: Telegram must not send it again
            return JSONResponse({"ok": True, "dropped": "the message's date is out of range"})
        if not await self._dispatch(update):  # Telegram retries a failed delivery
            return JSONResponse({"error": "message store unavailable"}, status_code=503)
        return JSONResponse({"ok": True})

    def _stale(self, update: Update) -> bool:
        """Whether a webhook update's message is dated outside ``max_clock_skew_sec`` of now:
        a captured request sent again after the mailbox forgot its id. Said in the log."""
        message = update.message
        if message is None:
            return False
        date = message.date if isinstance(message.date, dt.datetime) else None
        if date is not None and within_clock_skew(date.timestamp(), self.config.max_clock_skew_sec):
            return False
        log.warning("telegram message dropped: its date is too far from now (a replay?) or "
                    "missing", channel=self.name, update_id=update.update_id,
                    date=date.isoformat() if date else None)  # fmt: skip
        return True

    # -- typing ----------------------------------------------------------------------------

    async def on_accepted(self, message: InboundMessage) -> None:
        if self._bot is None:
            return
        typing = self._typing.setdefault(message.chat_id, _Typing())
        typing.pending[message.message_id] = (message.session_key, time.monotonic())
        if typing.task is None or typing.task.done():
            typing.task = asyncio.create_task(self._type(message.chat_id, typing),
                                              name=f"telegram-typing-{message.chat_id}")  # fmt: skip

    async def on_delivered(self, message_id: str, chat_id: str) -> None:
        typing = self._typing.get(chat_id)
        if typing is None:
            return
        typing.pending.pop(message_id, None)
        if not typing.pending:
            self._typing.pop(chat_id, None)
            if typing.task is not None and typing.task is not asyncio.current_task():
                typing.task.cancel()

    async def _type(self, chat_id: str, typing: _Typing) -> None:
        """Say "typing" every few seconds while the chat has messages being answered (and
        not right after a message of ours: Telegram clears the indicator on each one)."""
        try:
            while typing.pending:
                async with typing.lock:
                    if time.monotonic() - typing.last_sent >= TYPING_EVERY_SEC:
                        with contextlib.suppress(TelegramError):
                            await self._require_bot().send_chat_action(
                                _chat(chat_id), ChatAction.TYPING, read_timeout=5.0
                            )
                await asyncio.sleep(TYPING_EVERY_SEC)
                await self._drop_finished(typing)
        except SendError:  # stopped meanwhile
            pass
        finally:
            if self._typing.get(chat_id) is typing and not typing.pending:
                self._typing.pop(chat_id, None)

    async def _drop_finished(self, typing: _Typing) -> None:
        """Forget messages answered elsewhere (another replica sent the reply), failed, or
        pending longer than ``TYPING_MAX_SEC``."""
        now = time.monotonic()
        for message_id, (session_key, since) in list(typing.pending.items()):
            status = None
            with contextlib.suppress(RedisError, OSError):
                status = await self.ctx.redis.hget(k.message_key(session_key, message_id),
                                                   "status")  # fmt: skip
            if status in FINISHED or now - since > TYPING_MAX_SEC:
                typing.pending.pop(message_id, None)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        bot = self._require_bot()
        typing = self._typing.get(chat_id)
        if typing is None:
            await self._send(bot, chat_id, text, reply_to)
            return
        async with typing.lock:
            try:
                await self._send(bot, chat_id, text, reply_to)
            finally:
                typing.last_sent = time.monotonic()

    async def _send(self, bot: Bot, chat_id: str, text: str, reply_to: str | None) -> None:
        reply = None
        if reply_to and is_ascii_number(reply_to):
            reply = ReplyParameters(int(reply_to), allow_sending_without_reply=True)
        try:
            try:
                await bot.send_message(_chat(chat_id), to_markdown_v2(text),
                                       parse_mode=ParseMode.MARKDOWN_V2, reply_parameters=reply)  # fmt: skip
            except BadRequest as exc:  # "can't parse entities" and the like: send it plain
                log.info("telegram refused the formatted text; sending it plain",
                         channel=self.name, chat_id=chat_id, error=str(exc))  # fmt: skip
                await bot.send_message(_chat(chat_id), text, reply_parameters=reply)
        except RetryAfter as exc:
            wait = retry_after(exc)
            raise SendError(f"telegram flood control: {exc}", retry_after=wait) from None
        except (Forbidden, BadRequest) as exc:  # bot blocked or removed, chat not found, ...
            raise SendError(f"telegram refused the message: {exc}", permanent=True) from None
        except ChatMigrated as exc:
            raise SendError(f"the group moved to chat {exc.new_chat_id}", permanent=True) from None
        except InvalidToken:  # not permanent: the token may be fixed and reloaded
            raise SendError("the Bot API refused the bot token") from None
        except TelegramError as exc:  # network trouble, timeouts, 5xx
            raise SendError(f"telegram: {exc}") from None


# -- helpers -------------------------------------------------------------------------------


def _chat(chat_id: str) -> int | str:
    return int(chat_id) if re.fullmatch(r"-?\d+", chat_id) else chat_id
