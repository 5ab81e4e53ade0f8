"""Session history: a Redis list of JSON chat messages, shared by every worker host.

Appends happen once per turn, in one Lua call (RPUSH + LTRIM), so a turn's messages land
together or not at all, and the list never grows past its cap. A turn is saved once per
message id: a message run again after its worker died between saving and replying does not
add its turn twice. Compaction swaps the whole
list (``replace``) for a leading summary (role ``system``) plus the recent messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from claw_worker import constants

# KEYS: history, saved mark   ARGV: mark ttl_sec, max entries, message JSON...
# Appends the turn unless the mark says this message's turn is already there; returns
# {appended 1|0, the list's length}.
_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) == false then
  return {0, redis.call('LLEN', KEYS[1])}
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
return {1, redis.call('LLEN', KEYS[1])}
"""
SAVED_MARK_TTL_SEC = 7 * 24 * 3600  # as long as a message record lives

MAX_ENTRIES = 200  # kept in Redis per session; compaction summarises older turns
LOAD_LIMIT = 100  # read into the context per turn

Message = dict[str, Any]


class History:
    def __init__(self, client: redis.Redis, session_key: str, *, max_entries: int = MAX_ENTRIES):
        self._redis = client
        self._session_key = session_key
        self._key = constants.history_key(session_key)
        self._max = max_entries
        # The whole list as last read by load_all, until this object writes: the session
        # lease makes the turn's worker the only writer, so a following load() can cut its
        # window from it instead of reading Redis again.
        self._snapshot: tuple[list[Message], int] | None = None
        self.length: int | None = None  # the list's length after the last append

    def load(self, limit: int = LOAD_LIMIT) -> list[Message]:
        """The last ``limit`` messages, starting at a user message.

        A cut may fall inside a tool exchange; a leading ``tool`` result (or an assistant
        tool call whose results follow) without its start would be rejected by the API, so
        everything before the first user message in the window is dropped. A compaction
        summary at the head of the list always comes first.
        """
        if self._snapshot is not None:
            messages, raw_len = self._snapshot
            head = messages[0] if messages else None
            return _window(head, messages[-limit:], raw_len <= limit)
        pipe = self._redis.pipeline(transaction=True)
        pipe.lindex(self._key, 0)
        pipe.lrange(self._key, -limit, -1)
        first, raw = pipe.execute()
        messages = _readable(raw)
        head = _readable([first]) if first is not None else []
        holds_head = bool(raw) and raw[0] == first and bool(head)
        return _window(head[0] if head else None, messages, holds_head)

    def load_all(self) -> tuple[list[Message], int]:
        """Every stored message (damaged ones left out, see ``_readable``) and the raw list
        length, for ``replace(expect_len=...)``."""
        raw: list[str] = self._redis.lrange(self._key, 0, -1)  # type: ignore[assignment]
        messages = _readable(raw)
        self._snapshot = (messages, len(raw))
        return list(messages), len(raw)

    def append(self, messages: Sequence[Message], *, message_id: str = "") -> bool:
        """Add a turn's messages; with ``message_id``, only once per message (False when
        that message's turn was already saved)."""
        if not messages:
            return False
        self._snapshot = None
        encoded = [json.dumps(m, ensure_ascii=False) for m in messages]
        if message_id:
            mark = constants.history_saved_key(self._session_key, message_id)
            args = [SAVED_MARK_TTL_SEC, self._max, *encoded]
            saved, self.length = self._redis.eval(_APPEND_ONCE, 2, self._key, mark, *args)
            return bool(saved)
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(self._key, *encoded)
        pipe.ltrim(self._key, -self._max, -1)
        pipe.llen(self._key)
        self.length = pipe.execute()[-1]
        return True

    def replace(self, messages: Sequence[Message], *, expect_len: int | None = None) -> bool:
        """Swap the whole history in one MULTI (DEL + RPUSH); False, changing nothing, if
        the list no longer has ``expect_len`` entries (someone appended meanwhile)."""
        self._snapshot = None
        with self._redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._key)
                if expect_len is not None and int(pipe.llen(self._key)) != expect_len:
                    return False
                pipe.multi()
                pipe.delete(self._key)
                if messages:
                    pipe.rpush(self._key, *(json.dumps(m, ensure_ascii=False) for m in messages))
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def clear(self) -> None:
        self._snapshot = None
        self._redis.delete(self._key)

    def __len__(self) -> int:
        return int(self._redis.llen(self._key))  # type: ignore[arg-type]


def _window(head: Message | None, messages: list[Message], holds_head: bool) -> list[Message]:
    """The turn's history from a window of the list (see ``History.load``); ``holds_head``:
    the window starts at the list's first entry."""
    if head is not None and head.get("role") == "system" and holds_head:
        # The window holds the whole list from the compaction summary on, and compaction
        # cut the tail at a tool-exchange boundary: nothing needs dropping.
        rest = messages[1:]
        while rest and rest[0].get("role") == "tool":
            rest = rest[1:]
        return [head, *rest]
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            # A compaction summary heads the list; it is kept even when the window starts
            # later, since it is all that is left of the older turns. (The window never
            # holds it past ``index``: it is the list's first entry.)
            if head is not None and head.get("role") == "system":
                return [head, *messages[index:]]
            return messages[index:]
    return []


ROLES = frozenset({"system", "user", "assistant", "tool"})


def _readable(raw: Sequence[str]) -> list[Message]:
    """The stored entries an API accepts, in order: a damaged entry (not JSON, an unknown
    role, content that is not text) is left out, and so is a whole tool exchange that lost
    its call or one of its results, or names a call badly. Sent as it was, such a history
    was refused with a 400 on this turn and every later one: the session was dead."""
    messages = [m for m in map(_decode, raw) if m is not None]
    kept: list[Message] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if message["role"] == "tool":
            continue  # a result whose call was lost
        if message["role"] != "assistant" or not message.get("tool_calls"):
            kept.append(message)
            continue
        results = []
        while index < len(messages) and messages[index]["role"] == "tool":
            results.append(messages[index])
            index += 1
        asked = _call_ids(message["tool_calls"])  # None: a call named badly
        answered = sorted(str(r.get("tool_call_id")) for r in results)
        if asked is not None and sorted(asked) == answered:
            kept += [message, *results]
    return kept


def _call_ids(calls: object) -> list[str] | None:
    """The ids of well-formed tool calls, or None when any call is not one."""
    if not isinstance(calls, list):
        return None
    ids = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)
                and isinstance(call.get("id"), str)):  # fmt: skip
            return None
        ids.append(call["id"])
    return ids


def _decode(item: str) -> Message | None:
    try:
        value = json.loads(item)
    except ValueError:
        return None  # a corrupt entry must not break the session forever
    if not isinstance(value, dict) or value.get("role") not in ROLES:
        return None
    content = value.get("content")
    if isinstance(content, str | list) or (content is None and value.get("tool_calls")):
        return value
    return None
