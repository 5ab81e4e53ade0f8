"""Session history: a Redis list of JSON chat messages, shared by every worker host.

Appends happen once per turn, in one MULTI (RPUSH + LTRIM), so a turn's messages land
together or not at all, and the list never grows past its cap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from claw_worker import constants

MAX_ENTRIES = 200  # kept in Redis per session; compaction (later) summarises older turns
LOAD_LIMIT = 100  # read into the context per turn

Message = dict[str, Any]


class History:
    def __init__(self, client: redis.Redis, session_key: str, *, max_entries: int = MAX_ENTRIES):
        self._redis = client
        self._key = constants.history_key(session_key)
        self._max = max_entries

    def load(self, limit: int = LOAD_LIMIT) -> list[Message]:
        """The last ``limit`` messages, starting at a user message.

        A cut may fall inside a tool exchange; a leading ``tool`` result (or an assistant
        tool call whose results follow) without its start would be rejected by the API, so
        everything before the first user message in the window is dropped.
        """
        raw: list[str] = self._redis.lrange(self._key, -limit, -1)  # type: ignore[assignment]
        messages = [m for m in (_decode(item) for item in raw) if m is not None]
        for index, message in enumerate(messages):
            if message.get("role") == "user":
                return messages[index:]
        return []

    def append(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(self._key, *(json.dumps(m, ensure_ascii=False) for m in messages))
        pipe.ltrim(self._key, -self._max, -1)
        pipe.execute()

    def clear(self) -> None:
        self._redis.delete(self._key)

    def __len__(self) -> int:
        return int(self._redis.llen(self._key))  # type: ignore[arg-type]


def _decode(item: str) -> Message | None:
    try:
        value = json.loads(item)
    except ValueError:
        return None  # a corrupt entry must not break the session forever
    return value if isinstance(value, dict) and "role" in value else None
