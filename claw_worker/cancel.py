"""/stop: ask the run of a session to end now; the worker side that hears it.

The ingress sets a cancel mark (the time of the request) and broadcasts it on the control
channel. Each worker process has one listener thread; a run of that session that started
before the request sees ``should_stop()`` turn true within milliseconds. The mark is the
fallback if the broadcast was missed (a reconnect): runs re-check it every two seconds.
Runs that start after the request are not affected, so the queue simply goes on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis
import structlog

from claw_worker import constants as k

log = structlog.get_logger(__name__)

MARK_TTL_SEC = 600
MARK_RECHECK_SEC = 2.0


def _stop_payload(session_key: str, at: float) -> str:
    return json.dumps({"op": "stop", "session_key": session_key, "at": at})


async def request_stop(client: aioredis.Redis, session_key: str) -> float:
    """Ask the current run of ``session_key`` to stop (ingress side); returns the time."""
    at = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(k.cancel_key(session_key), at, ex=MARK_TTL_SEC)
        pipe.publish(k.CONTROL_CHANNEL, _stop_payload(session_key, at))
        await pipe.execute()
    return at


def request_stop_sync(client: redis.Redis, session_key: str) -> float:
    at = time.time()
    client.set(k.cancel_key(session_key), at, ex=MARK_TTL_SEC)
    client.publish(k.CONTROL_CHANNEL, _stop_payload(session_key, at))
    return at


@dataclass(eq=False)
class RunHandle:
    session_key: str
    started_at: float = field(default_factory=time.time)
    stopped: threading.Event = field(default_factory=threading.Event)
    checked_mark_at: float = 0.0


class CancelListener:
    """Tracks this process's running runs and sets their events when a /stop arrives."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._runs: dict[str, set[RunHandle]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def begin(self, session_key: str) -> RunHandle:
        handle = RunHandle(session_key)
        with self._lock:
            self._runs.setdefault(session_key, set()).add(handle)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._listen, name="cancel-listener", daemon=True
                )
                self._thread.start()
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
        if mark is not None and float(mark) >= handle.started_at:
            handle.stopped.set()

    def _stop(self, session_key: str, at: float) -> None:
        with self._lock:
            runs = list(self._runs.get(session_key, ()))
        for handle in runs:
            if handle.started_at <= at:
                handle.stopped.set()
                log.info("run stop requested", session_key=session_key)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(k.CONTROL_CHANNEL)
                for item in pubsub.listen():
                    self._on_message(item.get("data"))
            except redis.RedisError as exc:
                log.warning("control channel lost, resubscribing", error=str(exc))
                time.sleep(1.0)

    def _on_message(self, data: object) -> None:
        try:
            event = json.loads(data)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if isinstance(event, dict) and event.get("op") == "stop":
            self._stop(str(event.get("session_key")), float(event.get("at") or time.time()))
