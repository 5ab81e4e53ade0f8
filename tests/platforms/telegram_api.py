"""A loopback Telegram Bot API, in the documented wire format (core.telegram.org/bots/api):
``POST /bot<token>/<method>`` with form-urlencoded or JSON parameters (python-telegram-bot
sends forms, objects JSON-encoded), answering ``{"ok": true, "result": ...}`` or ``{"ok":
false, "error_code": N, "description": "...", "parameters": {...}}``.

Methods: ``getMe``; ``getUpdates`` (long poll: waits up to ``timeout`` seconds for updates
with ``update_id >= offset``, confirming the ones before it; 409 while a webhook is set);
``deleteWebhook``, ``setWebhook`` (``url``, ``secret_token``: once set, each update pushed is
POSTed there with the ``X-Telegram-Bot-Api-Secret-Token`` header and repeated until answered
2xx, as Telegram does);
``sendMessage`` (MarkdownV2 parsed as Telegram does: an unescaped reserved character or an
unclosed entity is 400 "can't parse entities"; over 4096 characters after parsing is 400;
records the visible text); ``sendChatAction``. A wrong token is 401 on every method.
``fail(method, status, description, retry_after=)`` queues an error answer for the next call.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx

from tests.platforms.base import Handler, LoopbackHTTP

TOKEN = "7000000001:AAH-fake-telegram-test-token_0123456789"
BOT = {"id": 7000000001, "is_bot": True, "first_name": "Claw", "username": "claw_test_bot",
       "can_join_groups": True, "can_read_all_group_messages": False,
       "supports_inline_queries": False}  # fmt: skip
MAX_TEXT = 4096
WEBHOOK_ATTEMPTS, WEBHOOK_RETRY_SEC = 20, 0.5
RESERVED = set("_*[]()~`>#+-=|{}.!")
JSON_PARAMS = {"reply_parameters", "allowed_updates", "link_preview_options", "entities"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic()
    status: int = 0  # 0 while being answered
    text: str = ""  # sendMessage: the text as the user sees it
    result: dict[str, Any] = field(default_factory=dict)  # sendMessage: the Message sent


@dataclass
class _Error:
    status: int
    description: str
    retry_after: float | None = None
    chat_id: int | None = None  # only a call to this chat meets it (None: any call)


class _Handler(Handler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        raw = self.read_body()
        head, _, method = self.path.split("?", 1)[0].lstrip("/").rpartition("/")
        params: dict[str, Any]
        if self.headers.get("Content-Type", "").startswith("application/json"):
            params = json.loads(raw or b"{}")
        else:
            params = dict(parse_qsl(raw.decode()))
            for name in JSON_PARAMS & params.keys():
                params[name] = json.loads(params[name])
        if not head.startswith("bot"):
            status, body = _error(404, "Not Found")
        else:
            status, body = self.fake.handle(head[3:], method, params)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a poll given up on
            self.send_json(status, body)

    do_GET = do_POST


@dataclass
class TelegramAPI(LoopbackHTTP):
    handler = _Handler
    poll_interval = 0.1
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_answers: list[int] = field(default_factory=list)  # statuses of webhook POSTs

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._updates: deque[dict[str, Any]] = deque()
        self._update_ids = itertools.count(100_001)
        self._message_ids = itertools.count(5_001)
        self._errors: dict[str, deque[_Error]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The root before ``/bot<token>/`` (channels.telegram.api_base)."""
        return self.url

    def stop(self) -> None:
        with self._lock:
            self._updates.clear()
            self._lock.notify_all()
        super().stop()

    # -- scripting -------------------------------------------------------------------------
    def fail(self, method: str, status: int, description: str, *,
             retry_after: float | None = None, chat_id: int | None = None) -> None:  # fmt: skip
        """The next call of ``method`` (to ``chat_id``, if given) fails so."""
        with self._lock:
            self._errors.setdefault(method, deque()).append(
                _Error(status, description, retry_after, chat_id)
            )

    def push_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int = 4242,
        first_name: str = "Ada",
        chat_type: str = "private",
        reply_to: dict[str, Any] | None = None,
        photo: str | None = None,
        document: tuple[str, str] | None = None,  # (file_id, file_name)
        caption: str | None = None,
    ) -> dict[str, Any]:
        """A user's message as an update (entities for @mentions and /commands filled in):
        queued for getUpdates, or POSTed to the webhook when one is set. Returns the message."""
        user = {"id": user_id, "is_bot": False, "first_name": first_name,
                "username": first_name.lower(), "language_code": "en"}  # fmt: skip
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat.update(first_name=first_name, username=user["username"])
        else:
            chat["title"] = "Test group"
        message: dict[str, Any] = {"message_id": next(self._message_ids), "from": user,
                                   "chat": chat, "date": int(time.time())}  # fmt: skip
        if text is not None:
            message["text"] = text
            if entities := _entities(text):
                message["entities"] = entities
        if caption is not None:
            message["caption"] = caption
            if entities := _entities(caption):
                message["caption_entities"] = entities
        if photo is not None:
            message["photo"] = [
                {"file_id": f"{photo}-s", "file_unique_id": "u-s", "width": 90, "height": 90,
                 "file_size": 1200},
                {"file_id": photo, "file_unique_id": "u-l", "width": 1280, "height": 960,
                 "file_size": 98765},
            ]  # fmt: skip
        if document is not None:
            message["document"] = {"file_id": document[0], "file_unique_id": "u-d",
                                   "file_name": document[1], "mime_type": "application/pdf",
                                   "file_size": 4321}  # fmt: skip
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self.push_update({"message": message})
        return message

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), **update}
        with self._lock:
            webhook = (self.webhook_url, self.webhook_secret)
            if not webhook[0]:
                self._updates.append(update)
                self._lock.notify_all()
                return update
        headers = {"X-Telegram-Bot-Api-Secret-Token": webhook[1]} if webhook[1] else {}
        for _attempt in range(WEBHOOK_ATTEMPTS):  # Telegram repeats a failed delivery
            answer = httpx.post(webhook[0], json=update, headers=headers, timeout=30)
            self.webhook_answers.append(answer.status_code)
            if answer.is_success:
                break
            time.sleep(WEBHOOK_RETRY_SEC)
        return update

    # -- inspection ------------------------------------------------------------------------
    def calls_of(self, method: str, *, ok: bool | None = None) -> list[Call]:
        with self._lock:
            found = [c for c in self.calls if c.method == method]
        if ok is None:
            return found
        return [c for c in found if c.status == 200] if ok else [
            c for c in found if c.status not in (0, 200)]  # fmt: skip

    def sent(self, chat_id: int | None = None) -> list[Call]:
        """Messages the bot sent (accepted by the API), in order."""
        return [c for c in self.calls_of("sendMessage", ok=True)
                if chat_id is None or int(c.params["chat_id"]) == chat_id]  # fmt: skip

    # -- the API ---------------------------------------------------------------------------
    def handle(self, token: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        call = Call(method, params, time.monotonic())
        with self._lock:
            self.calls.append(call)  # on arrival: a long poll is seen while it waits
        status, body = self._answer(token, method, params, call)
        call.status = status
        return status, body

    def _answer(self, token: str, method: str, params: dict[str, Any],
                call: Call) -> tuple[int, dict[str, Any]]:  # fmt: skip
        if token != self.token:
            return _error(401, "Unauthorized")
        with self._lock:
            queued = self._errors.get(method) or deque()
            chat = params.get("chat_id")
            scripted = next((e for e in queued if e.chat_id is None or str(e.chat_id) == chat
                             or e.chat_id == chat), None)  # fmt: skip
            if scripted is not None:
                queued.remove(scripted)
        if scripted is not None:
            return _error(scripted.status, scripted.description, scripted.retry_after)
        if method == "getMe":
            return _ok(BOT)
        if method == "getUpdates":
            return self._get_updates(params)
        if method == "deleteWebhook":
            with self._lock:
                self.webhook_url = self.webhook_secret = ""
            return _ok(True)
        if method == "setWebhook":
            with self._lock:
                self.webhook_url = str(params.get("url", ""))
                self.webhook_secret = str(params.get("secret_token", ""))
            return _ok(True)
        if method == "sendChatAction":
            return _ok(True)
        if method == "sendMessage":
            return self._send_message(params, call)
        return _error(404, "Not Found")

    def _get_updates(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        with self._lock:
            if self.webhook_url:
                return _error(409, "Conflict: can't use getUpdates method while webhook is "
                              "active; use deleteWebhook to delete the webhook first")  # fmt: skip
            while self._updates and self._updates[0]["update_id"] < offset:
                self._updates.popleft()  # confirmed
            while not self._updates and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return _ok(list(itertools.islice(self._updates, limit)))

    def _send_message(self, params: dict[str, Any], call: Call) -> tuple[int, dict[str, Any]]:
        raw = str(params.get("text", ""))
        try:
            text = parse_markdown_v2(raw) if params.get("parse_mode") == "MarkdownV2" else raw
        except ValueError as exc:
            return _error(400, f"Bad Request: can't parse entities: {exc}")
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > MAX_TEXT:
            return _error(400, "Bad Request: message is too long")
        call.text = text
        chat_id = int(params["chat_id"])
        message = {"message_id": next(self._message_ids), "from": BOT, "date": int(time.time()),
                   "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
                   "text": text}  # fmt: skip
        call.result = message
        return _ok(message)


def _ok(result: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"ok": True, "result": result}


def _error(
    status: int, description: str, retry_after: float | None = None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return status, body


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _entities(text: str) -> list[dict[str, Any]]:
    """``mention`` and ``bot_command`` entities, with UTF-16 offsets as Telegram gives them."""
    import re

    found = []
    for match in re.finditer(r"(?<![\w/])(@\w{3,})|(?:^|(?<=\s))(/\w+(?:@\w+)?)", text):
        kind = "mention" if match.group(1) else "bot_command"
        found.append({"type": kind, "offset": _utf16(text[: match.start()]),
                      "length": _utf16(match.group(0))})  # fmt: skip
    return found


def parse_markdown_v2(text: str) -> str:
    """The text a MarkdownV2 message shows, or ValueError saying what Telegram would."""
    out: list[str] = []
    open_: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                raise ValueError("text must not end with a backslash")
            out.append(text[i + 1])
            i += 2
        elif text.startswith("```", i):
            end = _closing(text, i + 3, "```")
            body = text[i + 3 : end]
            first, newline, rest = body.partition("\n")
            body = rest if newline and " " not in first else body
            out.append(_unescape_code(body))
            i = end + 3
        elif c == "`":
            end = _closing(text, i + 1, "`")
            out.append(_unescape_code(text[i + 1 : end]))
            i = end + 1
        elif c == "[":
            open_.append("[")
            i += 1
        elif c == "]" and open_ and open_[-1] == "[":
            open_.pop()
            if not text.startswith("(", i + 1):
                raise ValueError(
                    f"character '{c}' is reserved and must be escaped with the preceding '\\'"
                )
            end = _closing(text, i + 2, ")")
            i = end + 1
        elif text.startswith("||", i) or text.startswith("__", i) or c in "*_~":
            marker = text[i : i + 2] if text[i : i + 2] in ("||", "__") else c
            if open_ and open_[-1] == marker:
                open_.pop()
            elif marker in open_:
                raise ValueError(f"entities must nest: '{marker}' closes another entity")
            else:
                open_.append(marker)
            i += len(marker)
        elif c == ">" and (i == 0 or text[i - 1] == "\n"):
            i += 1  # a block quote line
        elif c in RESERVED:
            raise ValueError(
                f"character '{c}' is reserved and must be escaped with the preceding '\\'"
            )
        else:
            out.append(c)
            i += 1
    if open_:
        raise ValueError(f"can't find end of the entity starting with '{open_[-1]}'")
    return "".join(out)


def _closing(text: str, start: int, marker: str) -> int:
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(marker, i):
            return i
        i += 1
    raise ValueError(f"can't find end of the entity starting with '{marker}'")


def _unescape_code(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in "\\`":
            out.append(body[i + 1])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)
