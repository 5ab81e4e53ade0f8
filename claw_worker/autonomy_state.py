"""Autonomous mode and auto-learning: their state in Redis and the words that switch them.

One hash, ``constants.AUTONOMY``, holds both parts: :class:`Autonomy` (rounds of work in one
user's chat while the user is away) and :class:`Autolearn` (reviews of recent runs into
procedures), the latter's fields prefixed ``autolearn_``. The slash commands (in the
ingress), ``clawctl gateway autonomy`` and the beat tick (``beat_schedules/autonomy.py``,
``autolearn.py``) read and write it through these dataclasses, and each writer sets only
its own part, so switching one never undoes the other. The last active chat
(``constants.LAST_ACTIVE``, written by the ingress) is read here too.

Only the standard library, redis-py, the contract, the constants and the scripts are
imported: the ingress uses this.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import redis

from claw_worker import constants as k
from claw_worker.contract import OutboundMessage
from claw_worker.session.scripts import PUBLISH_ONCE

if TYPE_CHECKING:
    from claw_worker.config.schema import RuntimeControlConfig

# Channels a message nobody asked for cannot reach: the HTTP APIs answer only their own
# requests, and "" is a local terminal (clawctl agent).
UNDELIVERED_CHANNELS = frozenset({"", "api", "openai"})
IDLE_WORD = "AUTONOMY_IDLE"  # a round's whole reply when nothing is left to do
MAX_INTERVAL_SEC = 7 * 86400
UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds", "秒", "秒钟"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes", "分", "分钟"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours", "小时", "个小时", "钟头"), 3600),
    **dict.fromkeys(("d", "day", "days", "天"), 86400),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks", "周", "星期", "个星期"), 7 * 86400),
}
# Units always longer than MAX_INTERVAL_SEC: known, so the answer says "too long".
LONG_UNITS = frozenset(("mo", "mon", "month", "months", "月", "个月",
                        "y", "yr", "yrs", "year", "years", "年"))  # fmt: skip
_INTERVAL = re.compile(r"^(?:every\s*|each\s*|每隔?\s*)?(\d{1,7})\s*([a-z]+|[^\x00-\x7f]+)$")


@dataclass(frozen=True)
class Chat:
    """A chat a message can be delivered to, and the session its messages go to."""

    channel: str
    chat_id: str
    session_key: str
    at: float = 0.0  # (LAST_ACTIVE) when its user last wrote

    def label(self) -> str:
        where = f"{self.channel}:{self.chat_id}"
        return (
            where if self.session_key in (where, self.chat_id) else f"{where} ({self.session_key})"
        )


def own_chat(channel: str, chat_id: str, session_key: str) -> Chat | None:
    """The sender's chat, when messages can be delivered to it."""
    if channel in UNDELIVERED_CHANNELS or not chat_id:
        return None
    return Chat(channel, chat_id, session_key or f"{channel}:{chat_id}")


def last_active_json(chat: Chat) -> str:
    return json.dumps({"channel": chat.channel, "chat_id": chat.chat_id,
                       "session_key": chat.session_key, "at": chat.at})  # fmt: skip


def last_active(raw: str | None) -> Chat | None:
    """The LAST_ACTIVE record, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(raw) if raw else None
        chat = Chat(str(data["channel"]), str(data["chat_id"]),
                    str(data.get("session_key") or f"{data['channel']}:{data['chat_id']}"),
                    float(data.get("at") or 0))  # fmt: skip
    except (ValueError, TypeError, KeyError):
        return None
    return chat if chat.channel and chat.chat_id else None


def parse_interval(words: Sequence[str]) -> int:
    """Seconds from "every 30 minutes", "30m", "2h", "每30分钟"; 0 when ``words`` is empty.
    ValueError, saying what is accepted, for anything else."""
    text = " ".join(words).strip().lower()
    if not text:
        return 0
    found = _INTERVAL.match(text)
    unit = UNITS.get(found.group(2)) if found else None
    bounds = f"the interval must be between 1 second and {MAX_INTERVAL_SEC // 86400} days"
    if found is not None and found.group(2) in LONG_UNITS:
        raise ValueError(f"{bounds}: '{text[:40]}' is too long")
    if found is None or unit is None:
        raise ValueError(
            f"'{text[:40]}' is not an interval: say for example 'every 30 minutes', '2h' or '90s'"
        )
    seconds = int(found.group(1)) * unit
    if seconds > MAX_INTERVAL_SEC:
        raise ValueError(f"{bounds}: '{text[:40]}' is too long")
    if seconds < 1:
        raise ValueError(f"{bounds}: '{text[:40]}' is too short")
    return seconds


def human(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.1f} d".replace(".0 d", " d")


# -- the two parts of the hash ---------------------------------------------------------------

_PARSE: dict[str, Callable[[str], Any]] = {
    "bool": lambda text: text == "1", "int": int, "float": float, "str": str,
}  # fmt: skip
T = TypeVar("T", bound="_Part")


@dataclass(frozen=True)
class _Part:
    PREFIX: ClassVar[str] = ""

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> Self:
        values: dict[str, Any] = {}
        for field in fields(cls):
            text = raw.get(cls.PREFIX + field.name)
            if text:
                with contextlib.suppress(ValueError):  # a damaged field reads as its default
                    values[field.name] = _PARSE[str(field.type)](text)
        return cls(**values)

    def to_hash(self) -> dict[str, str]:
        def dump(value: Any) -> str:
            return ("1" if value else "0") if isinstance(value, bool) else str(value)

        return {self.PREFIX + f.name: dump(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Autonomy(_Part):
    enabled: bool = False
    session_key: str = ""  # the chat it works for (its rounds go to this session)
    channel: str = ""
    chat_id: str = ""
    interval_sec: int = 0  # asked for ("every 30 minutes"); 0: the minimum run interval
    started_at: float = 0.0
    rounds: int = 0  # rounds submitted since started (round ids count on it)
    rounds_without_user: int = 0
    consecutive_stalls: int = 0
    last_stall: str = ""  # why the last round counted as a stall
    last_round_at: float = 0.0
    pending_id: str = ""  # message id of the round queued or running, "" when none
    pending_at: float = 0.0
    pending_stalls: int = 0  # stalls already counted for the pending round's wait
    user_seen_at: float = 0.0  # the user's last message known to the tick
    stopped_reason: str = ""
    stopped_at: float = 0.0

    @classmethod
    def start(cls, chat: Chat, interval_sec: int, now: float) -> Autonomy:
        return cls(enabled=True, session_key=chat.session_key, channel=chat.channel,
                   chat_id=chat.chat_id, interval_sec=interval_sec, started_at=now,
                   user_seen_at=now)  # fmt: skip

    def stop(self, reason: str, now: float) -> Autonomy:
        return replace(self, enabled=False, stopped_reason=reason, stopped_at=now,
                       pending_id="", pending_at=0.0, pending_stalls=0)  # fmt: skip

    def chat(self) -> Chat:
        return Chat(self.channel, self.chat_id, self.session_key)


@dataclass(frozen=True)
class Autolearn(_Part):
    PREFIX: ClassVar[str] = "autolearn_"

    enabled: bool = False
    interval_sec: int = 0  # 0: DEFAULT_AUTOLEARN_SEC
    started_at: float = 0.0
    total: int = 0  # rounds submitted since started (round ids count on it)
    rounds: int = 0  # rounds without the user
    last_round_at: float = 0.0
    reviewed_until: float = 0.0  # runs queued up to this time have been reviewed
    user_seen_at: float = 0.0
    channel: str = ""  # where to say that it stopped ("": the last active chat)
    chat_id: str = ""
    session_key: str = ""
    last_result: str = ""
    stopped_reason: str = ""
    stopped_at: float = 0.0

    @classmethod
    def start(cls, chat: Chat | None, interval_sec: int, now: float) -> Autolearn:
        return cls(enabled=True, interval_sec=interval_sec, started_at=now, user_seen_at=now,
                   channel=chat.channel if chat else "", chat_id=chat.chat_id if chat else "",
                   session_key=chat.session_key if chat else "")  # fmt: skip

    def stop(self, reason: str, now: float) -> Autolearn:
        return replace(self, enabled=False, stopped_reason=reason, stopped_at=now)


DEFAULT_AUTOLEARN_SEC = 1800


def change(client: redis.Redis, part: type[T], decide: Callable[[T], tuple[T, Any]]) -> Any:
    """Read ``part`` of the state, let ``decide`` make the new one, write it if it changed:
    atomically (WATCH), so a tick and a finished round never overwrite each other."""
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(k.AUTONOMY)
                state = part.from_hash(pipe.hgetall(k.AUTONOMY))
                new, result = decide(state)
                pipe.multi()
                if new != state:
                    pipe.hset(k.AUTONOMY, mapping=new.to_hash())
                pipe.execute()
                return result
            except redis.WatchError:
                continue


NOTICE_TTL_SEC = 7 * 86400


def notify(client: redis.Redis, chat: Chat, text: str, *, message_id: str, origin: str) -> None:
    """Tell the chat's user something (why autonomy stopped), through the outbound stream
    as replies go; once per ``message_id``, however often it is attempted."""
    out = OutboundMessage(message_id=message_id, channel=chat.channel, chat_id=chat.chat_id,
                          session_key=chat.session_key, text=text,
                          metadata={"origin": origin, "kind": "notice"})  # fmt: skip
    client.register_script(PUBLISH_ONCE)(
        keys=[k.reply_sent_key(message_id), k.OUTBOUND_STREAM],
        args=[out.model_dump_json(), NOTICE_TTL_SEC, k.OUTBOUND_MAXLEN],
    )


# -- what the commands and the CLI show ------------------------------------------------------


def describe_autonomy(
    state: Autonomy, control: RuntimeControlConfig, now: float, *, show_chat: bool = True
) -> str:
    if not state.enabled:
        why = f" (stopped {human(now - state.stopped_at)} ago: {state.stopped_reason})"
        return "Autonomous mode: off" + (why if state.stopped_reason else "")
    where = state.chat().label() if show_chat else "another chat"
    every = max(state.interval_sec, control.autonomy_min_run_interval_sec)
    lines = [
        f"Autonomous mode: on for {where}, a round at most every {human(every)} once the "
        f"user has been away {human(control.autonomy_idle_threshold_sec)}",
        f"  {state.rounds} round(s) since {human(now - state.started_at)} ago; "
        f"{state.rounds_without_user} without the user (stops at "
        f"{control.autonomy_max_rounds_without_user}), {state.consecutive_stalls} stall(s) in a "
        f"row (stops at {control.autonomy_max_consecutive_stalls})",
    ]
    if state.pending_id:
        lines.append(
            f"  round {state.rounds} queued or running for {human(now - state.pending_at)}"
        )
    elif state.last_round_at:
        lines.append(f"  last round {human(now - state.last_round_at)} ago")
    return "\n".join(lines)


def describe_autolearn(state: Autolearn, control: RuntimeControlConfig, now: float) -> str:
    if not state.enabled:
        why = f" (stopped {human(now - state.stopped_at)} ago: {state.stopped_reason})"
        return "Auto-learning: off" + (why if state.stopped_reason else "")
    every = max(state.interval_sec or DEFAULT_AUTOLEARN_SEC, control.autonomy_min_run_interval_sec)
    text = (
        f"Auto-learning: on, a review of new runs at most every {human(every)}; {state.rounds} "
        f"round(s) without the user (stops at {control.autolearn_max_rounds_without_user})"
    )
    return text + (f"\n  last: {state.last_result}" if state.last_result else "")
