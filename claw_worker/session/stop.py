"""/stop: ask the run of a session to end now; the worker side that hears it.

Each session has a stop counter in Redis. The ingress increments it and broadcasts the new
value on the control channel (one Lua call). A run remembers the counter's value when it
starts; a broadcast (or, if the broadcast was missed during a reconnect, the counter
re-read every two seconds) with a higher value stops it within milliseconds. Runs that start
after the request read the new value and are not affected, so the queue simply goes on. A
counter rather than timestamps: hosts' clocks never have to agree. The sub-agents a
session started that still run are stopped with it (each reports "stopped" back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis
import structlog

from claw_worker import constants as k
from claw_worker.control import ControlListener

log = structlog.get_logger(__name__)

COUNTER_TTL_SEC = 7 * 86400  # outlives any run; refreshed by every /stop
MARK_RECHECK_SEC = 2.0
MAX_STOPPED = 64  # sessions one /stop reaches (work.max_depth and max_spawn bound the tree)

# INCR, refresh the TTL, broadcast; a value left by the old timestamp marks starts over.
_STOP_SCRIPT = """
local n = redis.pcall('INCR', KEYS[1])
if type(n) == 'table' then
  n = 1
  redis.call('SET', KEYS[1], n)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({op = 'stop', session_key = ARGV[3], epoch = n}))
return n
"""


def _stop_args(session_key: str) -> tuple[str, int, str, int, str, str]:
    return (_STOP_SCRIPT, 1, k.cancel_key(session_key), COUNTER_TTL_SEC,
            k.CONTROL_CHANNEL, session_key)  # fmt: skip


async def request_stop(client: aioredis.Redis, session_key: str) -> int:
    """Ask the current run of ``session_key`` to stop (ingress side), and those of the
    sub-agents it started that still run, down the tree: a user's /stop ends the work done
    for them, not only the reply being written. Returns the session's new counter."""
    epoch = int(await client.eval(*_stop_args(session_key)))  # type: ignore[misc]
    todo, seen = [session_key], {session_key}
    while todo and len(seen) < MAX_STOPPED:
        for child in await client.zrange(k.spawn_active_key(todo.pop()), 0, MAX_STOPPED):
            if child not in seen:
                seen.add(child)
                todo.append(child)
                await client.eval(*_stop_args(child))  # type: ignore[misc]
    return epoch


def request_stop_sync(client: redis.Redis, session_key: str) -> int:
    return int(client.eval(*_stop_args(session_key)))  # type: ignore[arg-type]


def _counter(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0  # none yet, or an old timestamp mark


@dataclass(eq=False)
class RunHandle:
    session_key: str
    epoch: int  # the session's stop counter when the run started
    stopped: threading.Event = field(default_factory=threading.Event)
    checked_mark_at: float = 0.0


class CancelListener:
    """Tracks this process's running runs and sets their events when a /stop arrives.

    The broadcasts come through the process's control listener (``claw_worker/control.py``);
    a listener of its own is made when none is given.
    """

    def __init__(self, client: redis.Redis, control: ControlListener | None = None) -> None:
        self.redis = client
        self.control = control or ControlListener(client)
        self.control.on("stop", self._on_event)
        self._runs: dict[str, set[RunHandle]] = {}
        self._lock = threading.Lock()

    def begin(self, session_key: str) -> RunHandle:
        handle = RunHandle(session_key, _counter(self.redis.get(k.cancel_key(session_key))))
        handle.checked_mark_at = time.monotonic()  # just read: the first re-read is due later
        with self._lock:
            self._runs.setdefault(session_key, set()).add(handle)
        self.control.start()
        return handle

    def end(self, handle: RunHandle) -> None:
        with self._lock:
            runs = self._runs.get(handle.session_key)
            if runs is not None:
                runs.discard(handle)
                if not runs:
                    del self._runs[handle.session_key]

    def should_stop(self, handle: RunHandle) -> Callable[[], bool]:
        def check() -> bool:
            if handle.stopped.is_set():
                return True
            now = time.monotonic()
            if now - handle.checked_mark_at >= MARK_RECHECK_SEC:
                handle.checked_mark_at = now
                self._check_mark(handle)
            return handle.stopped.is_set()

        return check

    def _check_mark(self, handle: RunHandle) -> None:
        try:
            mark = self.redis.get(k.cancel_key(handle.session_key))
        except redis.RedisError:
            return
        if _counter(mark) > handle.epoch:
            handle.stopped.set()

    def _stop(self, session_key: str, epoch: int) -> None:
        with self._lock:
            runs = list(self._runs.get(session_key, ()))
        for handle in runs:
            if epoch > handle.epoch:
                handle.stopped.set()
                log.info("run stop requested", session_key=session_key)

    def _on_event(self, event: dict[str, object]) -> None:
        self._stop(str(event.get("session_key")), _counter(event.get("epoch")))
