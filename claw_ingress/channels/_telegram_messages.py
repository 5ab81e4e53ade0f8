"""A Telegram ``Message`` as the fleet's ``InboundMessage``.

Text, or a caption with the media as references (``telegram:<kind>:<file_id>``; the largest
photo size; the file name, type and size in metadata; a placeholder such as ``[photo]`` as
the text when there is no caption). In groups only messages addressed to the bot: a mention
of it (``@username``, a text mention, ``/command@username``; cut from the text) or a reply
to one of its messages. A quoted message's id, text and sender go in metadata. The
``message_id`` is ``telegram-<chat>-<message>``, so the same update handled twice is stored
once. Updates are read one by one (:func:`read_updates`): one that cannot be read, or
converted, is logged and skipped, never the poll. What a Bot API error says to the poller
(:func:`poll_problem`, :func:`retry_after`) is read here too.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from typing import Any

import structlog
from telegram import Bot, Message, MessageEntity, Update, User
from telegram.constants import ChatType, MessageEntityType
from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning

from claw_worker.contract import InboundMessage

log = structlog.get_logger("claw_ingress.channels.telegram")

QUOTE_CHARS = 1000  # of a replied-to message's text, kept in metadata
MEDIA_KINDS = ("photo", "animation", "document", "voice", "audio", "video", "video_note")
PLACEHOLDER = {"photo": "[photo]", "voice": "[voice message]", "video_note": "[video message]"}


def to_inbound(message: Message, me: User, channel: str) -> InboundMessage | None:
    """The fleet's message for a Telegram message, or None when it is not for us."""
    user = message.from_user
    if user is None or user.is_bot:
        return None
    text = message.text or message.caption or ""
    entities = message.parse_entities() if message.text else message.parse_caption_entities()
    if _addressed_to_another_bot(entities, me):
        return None
    media, metadata = _media(message)
    if message.chat.type != ChatType.PRIVATE:
        mentioned, text = _cut_mention(entities, text, me)
        reply = message.reply_to_message
        to_bot = reply is not None and reply.from_user is not None and reply.from_user.id == me.id
        if not (mentioned or to_bot):
            return None
    if not text.strip():
        if not media:
            return None
        text = metadata.pop("placeholder")
    metadata.pop("placeholder", None)
    metadata.update(
        platform_message_id=message.message_id, sender_name=user.full_name,
        username=user.username or "", chat_type=message.chat.type,
        group=message.chat.type != ChatType.PRIVATE,
    )  # fmt: skip
    if message.message_thread_id:
        metadata["message_thread_id"] = message.message_thread_id
    reply_to = None
    if (quoted := message.reply_to_message) is not None:
        reply_to = str(quoted.message_id)
        metadata["reply_to_message_id"] = quoted.message_id
        metadata["reply_to_text"] = (quoted.text or quoted.caption or "")[:QUOTE_CHARS]
        metadata["reply_to_sender_id"] = str(quoted.from_user.id) if quoted.from_user else ""
    chat_id = str(message.chat.id)
    return InboundMessage(
        message_id=f"telegram-{chat_id}-{message.message_id}",
        channel=channel, chat_id=chat_id, sender_id=str(user.id), text=text.strip(),
        media=media, reply_to=reply_to, metadata=metadata,
    )  # fmt: skip


def _addressed_to_another_bot(entities: dict[MessageEntity, str], me: User) -> bool:
    """Whether the message starts with a ``/command@name`` naming another bot: in a group
    (even as a reply to us) it is that bot's, and ``/stop@other_bot`` must not stop ours."""
    for entity, value in entities.items():
        if entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0 and "@" in value:
            return value.partition("@")[2].casefold() != (me.username or "").casefold()
    return False


def _cut_mention(entities: dict[MessageEntity, str], text: str, me: User) -> tuple[bool, str]:
    """Whether a group message addresses the bot (``@username``, a text mention of it, or a
    ``/command@username``), and its text without that mention."""
    mentioned = False
    username = (me.username or "").casefold()
    for entity, value in entities.items():
        if entity.type == MessageEntityType.MENTION and value[1:].casefold() == username:
            mentioned = True
        elif (
            entity.type == MessageEntityType.TEXT_MENTION
            and entity.user
            and entity.user.id == me.id
        ):
            mentioned = True
            text = text.replace(value, "", 1)
        elif entity.type == MessageEntityType.BOT_COMMAND and value.casefold().endswith(
            f"@{username}"
        ):
            mentioned = True
    if mentioned and username:  # "@bot, do x" -> "do x"; "/help@bot" -> "/help"
        name = re.escape(me.username or "")
        text = re.sub(rf"(?i)(^|\s)@{name}\b[,:]?[ \t]*", r"\1", text)
        text = re.sub(rf"(?i)(/\w+)@{name}\b", r"\1", text)
    return mentioned, text.strip()


def _media(message: Message) -> tuple[list[str], dict[str, Any]]:
    """Media references (``telegram:<kind>:<file_id>``) and what metadata says of them;
    ``placeholder`` is the text to use when there is no caption."""
    for kind in MEDIA_KINDS:
        value = getattr(message, kind, None)
        if not value:
            continue
        item = value[-1] if kind == "photo" else value  # photo sizes: the largest last
        meta: dict[str, Any] = {"media_kind": kind, "file_unique_id": item.file_unique_id}
        name = getattr(item, "file_name", None)
        if name:
            meta["file_name"] = name
        if mime := getattr(item, "mime_type", None):
            meta["mime_type"] = mime
        if item.file_size:
            meta["file_size"] = item.file_size
        meta["placeholder"] = PLACEHOLDER.get(kind) or (
            f"[{kind}: {name}]" if name else f"[{kind}]"
        )
        return [f"telegram:{kind}:{item.file_id}"], meta
    return [], {}


def read_updates(result: Any, bot: Bot) -> list[tuple[int, Update | None]]:
    """A ``getUpdates`` result as ``(update_id, Update)`` pairs, in order, each read alone:
    python-telegram-bot reads a batch whole or not at all, so one update it cannot read (a
    newer API's shape, a proxy's mangling) failed every poll at the same offset and no chat
    heard anything again. One that cannot be read is logged and paired with None, to be
    confirmed and skipped; one without a numeric ``update_id`` cannot even be confirmed."""
    pairs: list[tuple[int, Update | None]] = []
    for item in result if isinstance(result, list) else []:
        update_id = item.get("update_id") if isinstance(item, dict) else None
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            log.warning("telegram update skipped", channel="telegram", error="no update_id")
            continue
        pairs.append((update_id, read_update(item, bot)))
    return pairs


def read_update(data: Any, bot: Bot) -> Update | None:
    """One update's JSON as an ``Update``; None (logged) when it cannot be read."""
    try:
        if isinstance(data, dict):
            return Update.de_json(data, bot)
        error = f"a JSON {type(data).__name__}, not an object"
    except Exception as exc:  # python-telegram-bot raises what its constructors raise
        error = repr(exc)
    log.warning("telegram update skipped", channel="telegram", error=error[:300],
                update_id=data.get("update_id") if isinstance(data, dict) else None)  # fmt: skip
    return None


def message_of(update: Update, me: User, channel: str) -> InboundMessage | None:
    """:func:`to_inbound` of the update's message (None: none, or not for us); one it cannot
    convert (a number where text belongs, no chat) is logged and skipped."""
    if update.message is None:
        return None
    try:
        return to_inbound(update.message, me, channel)
    except Exception as exc:  # fields of the wrong type: python-telegram-bot checks none
        log.warning("telegram update skipped", channel=channel, update_id=update.update_id,
                    error=repr(exc)[:300])  # fmt: skip
        return None


def poll_problem(exc: Exception) -> str:
    if isinstance(exc, InvalidToken):
        return "the Bot API refused the bot token (it was revoked?)"
    if "terminated by other getUpdates" in str(exc) or "webhook is active" in str(exc):
        return (
            f"{exc} (another process polls this bot, or a webhook was set: one poller per "
            "bot; with several ingress replicas use mode webhook)"
        )
    return str(exc) if isinstance(exc, TelegramError) else repr(exc)


def retry_after(exc: BaseException) -> float | None:
    """The seconds a Bot API flood-control error says to wait (None for other errors)."""
    if not isinstance(exc, RetryAfter):
        return None
    with warnings.catch_warnings():  # PTB 22 warns that the int becomes a timedelta
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
