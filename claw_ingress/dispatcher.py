"""Sends the Celery ``drain`` wake-up tasks off the request path, coalesced per session.

Publishing with kombu costs ~0.4 ms and holds the GIL; doing it inline would cut the
accept rate ten-fold (DESIGN.md). The event loop only adds a session key to a set; one
thread publishes. A session already waiting to be sent is not queued again.
"""

from __future__ import annotations

import queue
import threading
import time

import structlog
from celery import Celery

from claw_worker import constants as k

log = structlog.get_logger(__name__)

_STOP = object()


class Dispatcher:
    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="drain-dispatcher", daemon=True)
        self.sent = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def wake(self, session_key: str) -> None:
        """Ask for a drain of ``session_key`` soon; cheap and non-blocking."""
        with self._lock:
            if session_key in self._pending:
                return
            self._pending.add(session_key)
        self._queue.put(session_key)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            session_key = str(item)
            # Drop the pending mark before sending: a message stored while we send gets a
            # drain of its own, so none is left waiting for the sweeper.
            with self._lock:
                self._pending.discard(session_key)
            self._send(session_key)

    def _send(self, session_key: str) -> None:
        delay = 0.1
        while True:
            try:
                self.app.send_task(k.TASK_DRAIN, args=[session_key], queue=k.QUEUE_SESSIONS)
                self.sent += 1
                return
            except Exception as exc:  # broker down: keep trying; the sweeper is the backstop
                log.warning("drain dispatch failed", session_key=session_key, error=str(exc))
                if delay > 10:
                    return
                time.sleep(delay)
                delay *= 2
