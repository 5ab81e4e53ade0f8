"""The control channel: one listener thread per process, and the fleet's process registry.

Every long-running process of the fleet (worker, beat, ingress) runs one
:class:`ControlListener`. It subscribes to the control channel (Redis pub/sub) and hands
each broadcast to the handler registered for its ``op`` (``stop`` for /stop, ``reload`` for
a config reload), and it keeps the process in the registry (``claw:procs``) with a
heartbeat, so whoever coordinates a reload knows which processes to wait for. A process
that stops cleanly leaves the registry; one killed drops out once its heartbeat is stale.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import redis
import structlog

from claw_worker import constants as k
from claw_worker.process import ProcessIdentity

log = structlog.get_logger(__name__)

HEARTBEAT_SEC = 5.0
# A process whose heartbeat is older than this is taken for gone (killed, host down).
PROC_TTL_SEC = 3 * HEARTBEAT_SEC

RESUBSCRIBE_MAX_SEC = 5.0  # the longest wait between two tries while Redis is away

Handler = Callable[[dict[str, Any]], None]


class ControlListener:
    """Hears the control channel for this process; registers it when ``ident`` is given."""

    def __init__(
        self,
        client: redis.Redis,
        ident: ProcessIdentity | None = None,
        *,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.redis = client
        self.ident = ident
        self.info = info or {}
        self._handlers: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.subscribed = threading.Event()  # set once the first SUBSCRIBE is confirmed
        self.failed_tries = 0  # to subscribe, in a row (Redis away): logged once, backed off

    def on(self, op: str, handler: Handler) -> None:
        with self._lock:
            self._handlers.setdefault(op, []).append(handler)

    def start(self) -> ControlListener:
        """Start the thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="control-listener", daemon=True
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        """Leave the registry and stop listening (a clean shutdown)."""
        self._stopping.set()
        if self.ident is not None:
            try:
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hdel(k.PROCS, self.ident.key)
                    pipe.zrem(k.PROCS_SEEN, self.ident.key)
                    pipe.execute()
            except redis.RedisError:
                pass  # its heartbeat goes stale instead

    def _heartbeat(self) -> None:
        if self.ident is None:
            return
        record = json.dumps({**asdict(self.ident), **self.info})
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(k.PROCS, self.ident.key, record)
            pipe.zadd(k.PROCS_SEEN, {self.ident.key: time.time()})
            # Forget processes gone for a day, so the registry does not grow with restarts.
            pipe.zremrangebyscore(k.PROCS_SEEN, "-inf", time.time() - 86400)
            pipe.execute()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
                pubsub.subscribe(k.CONTROL_CHANNEL)
                if self.failed_tries:
                    log.info("control channel back", failed_tries=self.failed_tries)
                    self.failed_tries = 0
                next_beat = 0.0
                while not self._stopping.is_set():
                    if time.monotonic() >= next_beat:
                        self._heartbeat()
                        next_beat = time.monotonic() + HEARTBEAT_SEC
                    item = pubsub.get_message(timeout=1.0)
                    if item is None:
                        continue
                    if item.get("type") == "subscribe":
                        self.subscribed.set()
                    elif item.get("type") == "message":
                        self._dispatch(item.get("data"))
                pubsub.close()
            except redis.RedisError as exc:
                self.failed_tries += 1
                if self.failed_tries == 1:
                    log.warning("control channel lost, resubscribing", error=str(exc))
                self._stopping.wait(min(RESUBSCRIBE_MAX_SEC, 0.5 * 2**self.failed_tries))

    def _dispatch(self, data: object) -> None:
        try:
            event = json.loads(data)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict):
            return
        with self._lock:
            handlers = list(self._handlers.get(str(event.get("op")), ()))
        for handler in handlers:
            try:
                handler(event)
            except Exception as exc:  # one bad handler must not end the listener
                log.error("control handler failed", op=event.get("op"), error=repr(exc))


def live_processes(client: redis.Redis, *, now: float | None = None) -> list[dict[str, Any]]:
    """The registered processes whose heartbeat is fresh, as their records plus ``key``."""
    now = time.time() if now is None else now
    keys = client.zrangebyscore(k.PROCS_SEEN, now - PROC_TTL_SEC, "+inf")
    if not keys:
        return []
    records = client.hmget(k.PROCS, keys)
    found = []
    for key, raw in zip(keys, records, strict=True):
        if raw:
            found.append({**json.loads(raw), "key": key})
    return found


_listener: ControlListener | None = None
_listener_lock = threading.Lock()


def process_listener(client: redis.Redis, ident: ProcessIdentity, **info: Any) -> ControlListener:
    """This process's one registered listener (made and started on the first call)."""
    global _listener
    with _listener_lock:
        if _listener is None or _listener.ident is None or _listener.ident.pid != ident.pid:
            _listener = ControlListener(client, ident, info=info).start()
        return _listener
