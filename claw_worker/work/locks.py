"""Resource-key locks: a task takes all its keys at once, or none, and waits its turn.

``ACQUIRE`` (one Lua call) grants every key of a task only if each one is free and no live
task that began waiting earlier waits on any of them; otherwise it takes nothing, puts the
task in line on each of its keys (keeping its first place) and says what blocked it. So no
task holds some keys while waiting for others (no deadlock), and the oldest waiter is never
overtaken: it is blocked only by holders, and holders finish (or crash: their keys expire).

Keys (constants.py, all under the hash tag ``{locks}``, one Cluster slot):

- ``claw:{locks}:held:<key>``: the holder's token, with a TTL of ``worker.lease_sec``,
  renewed every third of it by one thread per worker process (``ResourceLocks``), so a
  crashed worker's keys free after their TTL. A key lost all the same (a process stalled
  longer than the TTL) is logged; its session lease, renewed on the same rhythm, is then
  lost too and the run stops (session/leases.py).
- ``claw:{locks}:wait:<key>``: ZSET waiter -> the sequence number of its first refusal
  (``claw:{locks}:seq``); ``claw:{locks}:order`` the same per waiter.
- ``claw:{locks}:seen``: ZSET waiter -> its last try; a waiter that has not tried for
  ``stale_sec`` (a task whose worker died and that was never retried) no longer blocks
  anyone: it is dropped, and starts again at the end of the line if it comes back.
- ``claw:{locks}:since``: HASH waiter -> when it first waited (for ``/status``).

Time is Redis's (``TIME``), so the hosts' clocks need not agree. Which keys a message takes
is decided in ``lock_keys.py``; the runner (session/runner.py) takes them before a run and
defers the message when refused.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
import structlog

from claw_worker import constants as k
from claw_worker import metrics

log = structlog.get_logger(__name__)

_GLOBAL_KEYS = (k.LOCK_ORDER, k.LOCK_SEEN, k.LOCK_SINCE, k.LOCK_SEQ)

# KEYS: order, seen, since, seq, held_1..held_n, wait_1..wait_n
# ARGV: waiter, token, ttl_ms, stale_ms
# Returns {1} when every key was taken; else {0, first-wait ms, "<i>:held" | "<i>:waiter"...}
# naming the keys (1-based) that blocked and why.
ACQUIRE = """
local waiter, token = ARGV[1], ARGV[2]
local ttl, stale = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = (#KEYS - 4) / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - stale
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('ZREM', KEYS[2], gone)
  redis.call('HDEL', KEYS[3], gone)
end
local mine = redis.call('ZSCORE', KEYS[1], waiter)
local older = mine and ('(' .. mine) or '+inf'
local blocked = {}
for i = 1, n do
  local waiting = KEYS[4 + n + i]
  if redis.call('EXISTS', KEYS[4 + i]) == 1 then
    blocked[#blocked + 1] = i .. ':held'
  else
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', older)) do
      if other ~= waiter then
        local seen = redis.call('ZSCORE', KEYS[2], other)
        if seen and tonumber(seen) >= cutoff then
          blocked[#blocked + 1] = i .. ':waiter'
          break
        end
        redis.call('ZREM', waiting, other)
      end
    end
  end
end
if #blocked == 0 then
  for i = 1, n do
    redis.call('SET', KEYS[4 + i], token, 'PX', ttl)
    redis.call('ZREM', KEYS[4 + n + i], waiter)
  end
  redis.call('ZREM', KEYS[1], waiter)
  redis.call('ZREM', KEYS[2], waiter)
  redis.call('HDEL', KEYS[3], waiter)
  return {1}
end
if not mine then
  mine = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[1], mine, waiter)
  redis.call('HSET', KEYS[3], waiter, now)
end
redis.call('ZADD', KEYS[2], now, waiter)
for i = 1, n do
  redis.call('ZADD', KEYS[4 + n + i], mine, waiter)
  redis.call('PEXPIRE', KEYS[4 + n + i], stale)
end
return {0, redis.call('HGET', KEYS[3], waiter) or now, unpack(blocked)}
"""

# KEYS: held_1..held_n   ARGV: token, ttl_ms. Renews the keys still ours; returns how many.
RENEW = """
local renewed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS: held_1..held_n   ARGV: token. Frees the keys still ours.
RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""


@dataclass(eq=False)
class HeldKeys:
    """Keys a task holds; renewed until released."""

    keys: tuple[str, ...]
    token: str
    renewed_at: float = field(default_factory=time.monotonic)
    lost: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Attempt:
    """The answer to one try: the keys held, or what blocked and since when it waits."""

    held: HeldKeys | None
    blocked: tuple[tuple[str, str], ...] = ()  # (key, "held" | "waiter")
    since: float = 0.0  # epoch seconds of the first refusal (Redis time)

    def describe(self) -> str:
        """``repo:x (held by another task), file:a.py (an older task waits)``"""
        why = {"held": "held by another task", "waiter": "an older task waits for it"}
        return ", ".join(f"{key} ({why[reason]})" for key, reason in self.blocked)


class ResourceLocks:
    """Takes, renews and frees the resource keys of this worker process's runs."""

    def __init__(self, client: redis.Redis, *, ttl_ms: int) -> None:
        self.redis = client
        self.ttl_ms = ttl_ms
        self.interval = ttl_ms / 3000.0
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._held: set[HeldKeys] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def acquire(self, waiter: str, keys: Sequence[str], *, stale_sec: float) -> Attempt:
        """Take every key in ``keys`` for ``waiter`` (a task's stable id: its message id),
        or none; a refused waiter keeps its place in line while it tries again within
        ``stale_sec``."""
        keys = tuple(sorted(set(keys)))
        token = f"{waiter}.{uuid.uuid4().hex}"
        redis_keys = [*_GLOBAL_KEYS]
        redis_keys += [k.resource_lock_key(key) for key in keys]
        redis_keys += [k.resource_waiters_key(key) for key in keys]
        args = [waiter, token, self.ttl_ms, max(1, int(stale_sec * 1000))]
        result = self._acquire(keys=redis_keys, args=args)
        if int(result[0]) == 1:
            held = HeldKeys(keys, token)
            self._keep(held)
            return Attempt(held)
        blocked = []
        for item in result[2:]:
            text = item.decode() if isinstance(item, bytes) else str(item)
            index, _, reason = text.partition(":")
            blocked.append((keys[int(index) - 1], reason))
        return Attempt(None, tuple(blocked), since=float(result[1]) / 1000.0)

    def release(self, held: HeldKeys) -> None:
        with self._lock:
            self._held.discard(held)
            metrics.LOCKS_HELD.set(len(self._held))
        self._release(keys=[k.resource_lock_key(key) for key in held.keys], args=[held.token])

    def _keep(self, held: HeldKeys) -> None:
        with self._lock:
            self._held.add(held)
            metrics.LOCKS_HELD.set(len(self._held))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lock-keeper", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                held = list(self._held)
            for one in held:
                self._renew_one(one)

    def _renew_one(self, held: HeldKeys) -> None:
        names = [k.resource_lock_key(key) for key in held.keys]
        try:
            renewed = int(self._renew(keys=names, args=[held.token, self.ttl_ms]))
        except redis.RedisError as exc:
            log.warning("resource keys renew failed", keys=list(held.keys), error=str(exc))
            return
        if renewed == len(names):
            held.renewed_at = time.monotonic()
        elif not held.lost.is_set():
            held.lost.set()
            log.error("resource keys lost (expired before renewal)", keys=list(held.keys))
