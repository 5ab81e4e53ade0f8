"""An access token a platform hands out for a while (Feishu's tenant token, DingTalk's and
QQ's access tokens): fetched once for every caller, kept until shortly before it expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenCache:
    """``fetch`` asks the platform for a token and returns it with its lifetime in seconds
    (raising the adapter's own error when refused). A token is kept until ``margin_sec``
    before it expires, the margin at most half its lifetime."""

    def __init__(
        self, fetch: Callable[[], Awaitable[tuple[str, float]]], *, margin_sec: float
    ) -> None:
        self._fetch = fetch
        self._margin = margin_sec
        self._token = ""
        self._until = 0.0
        self._lock = asyncio.Lock()  # one fetch at a time; the others wait for its token

    @property
    def cached(self) -> bool:
        """A token is at hand (:meth:`get` will not fetch)."""
        return bool(self._token) and time.monotonic() < self._until

    async def get(self) -> str:
        async with self._lock:
            if self.cached:
                return self._token
            token, lifetime = await self._fetch()
            self._token = token
            self._until = time.monotonic() + lifetime - min(self._margin, lifetime / 2)
            return token

    def drop(self, token: str) -> None:
        """The platform called ``token`` invalid: forget it, unless a newer one replaced it."""
        if self._token == token:
            self._token, self._until = "", 0.0
