"""Per-endpoint circuit breakers: after ``threshold`` consecutive failures an endpoint is
skipped for ``cooldown_sec``, then one call is let through (half-open) and its outcome
closes or reopens it.

A breaker is keyed by the endpoint it guards (``registry.endpoint_id``: protocol, api_base
and credentials), not by the proxy's name: a corrected ``api_base`` or key is a new
endpoint, tried at once, instead of one still blocked by the old address's failures.

State lives in Redis (``claw:breaker:<endpoint id>``) when a client is given, so every
worker host agrees about a dead endpoint and ``clawctl status`` can show it; without one it
is kept in memory (tests, ``clawctl agent`` without Redis).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from claw_worker.constants import breaker_key

# A state read from Redis is reused this long: one read per endpoint and second instead of one
# per LLM call. Another host's opening is seen at most this late (the cool-down is a minute).
STATE_CACHE_SEC = 1.0

# Records one failure atomically: count it, and open the breaker when it reaches the
# threshold. KEYS[1] the hash; ARGV threshold, open_until, ttl seconds.
_FAIL = """
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if n >= tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'open_until', ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""


@dataclass(frozen=True)
class BreakerState:
    failures: int = 0
    open_until: float = 0.0

    def is_open(self, now: float | None = None) -> bool:
        return self.open_until > (time.time() if now is None else now)


class Breakers:
    def __init__(
        self,
        redis_client: redis.Redis | None = None,
        *,
        threshold: int = 3,
        cooldown_sec: float = 60.0,
    ) -> None:
        self.redis = redis_client
        self.threshold = threshold
        self.cooldown_sec = cooldown_sec
        self._local: dict[str, BreakerState] = {}
        self._cache: dict[str, tuple[float, BreakerState]] = {}  # endpoint -> (read at, state)
        self._lock = threading.Lock()
        self._fail_script: Any = redis_client.register_script(_FAIL) if redis_client else None

    def state(self, endpoint: str) -> BreakerState:
        if self.redis is None:
            with self._lock:
                return self._local.get(endpoint, BreakerState())
        now = time.monotonic()
        cached = self._cache.get(endpoint)
        if cached is not None and now - cached[0] < STATE_CACHE_SEC:
            return cached[1]
        state = read_state(self.redis, endpoint)
        self._cache[endpoint] = (now, state)
        return state

    def allow(self, endpoint: str) -> bool:
        """False while the breaker is open; true when closed or the cool-down is over."""
        return not self.state(endpoint).is_open()

    def record_success(self, endpoint: str) -> None:
        if self.redis is None:
            with self._lock:
                self._local.pop(endpoint, None)
            return
        self._cache.pop(endpoint, None)  # this process's own news is never stale
        # The breaker is advice: a Redis hiccup must not fail an LLM answer.
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(breaker_key(endpoint))

    def record_failure(self, endpoint: str) -> bool:
        """Count a failure; True when this opened (or reopened) the breaker."""
        open_until = time.time() + self.cooldown_sec
        if self.redis is None:
            with self._lock:
                old = self._local.get(endpoint, BreakerState())
                failures = old.failures + 1
                opened = failures >= self.threshold
                self._local[endpoint] = BreakerState(
                    failures, open_until if opened else old.open_until
                )
                return opened
        self._cache.pop(endpoint, None)
        # Kept a while after the cool-down so status can show recent trouble, then dropped.
        ttl = int(self.cooldown_sec) + 3600
        try:
            failures = int(
                self._fail_script(
                    keys=[breaker_key(endpoint)], args=[self.threshold, open_until, ttl]
                )
            )
        except redis.RedisError:
            return False
        return failures >= self.threshold


def read_state(client: redis.Redis, endpoint: str) -> BreakerState:
    try:
        raw = client.hgetall(breaker_key(endpoint))
    except redis.RedisError:
        return BreakerState()  # unknown: let the call try rather than refuse it
    get = lambda name: raw.get(name.encode(), raw.get(name))  # noqa: E731 (bytes or str)
    try:
        return BreakerState(int(get("failures") or 0), float(get("open_until") or 0))
    except (TypeError, ValueError):
        return BreakerState()
