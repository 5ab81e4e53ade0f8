"""Keeps the session leases of this worker process alive while their runs go on.

One daemon thread renews every held lease each third of the lease time, so a run that lasts
longer than the lease (or than Celery's visibility timeout) is never run twice at once. A
lease that cannot be renewed is marked lost; the run sees that through ``should_stop``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
import structlog

from claw_worker.session.mailbox import Mailbox

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class HeldLease:
    session_key: str
    token: str
    renewed_at: float = field(default_factory=time.monotonic)
    lost: threading.Event = field(default_factory=threading.Event)


class LeaseKeeper:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.interval = mailbox.lease_ms / 3000.0
        self._held: set[HeldLease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, session_key: str, token: str) -> HeldLease:
        lease = HeldLease(session_key, token)
        with self._lock:
            self._held.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
        return lease

    def drop(self, lease: HeldLease) -> None:
        with self._lock:
            self._held.discard(lease)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                held = list(self._held)
            for lease in held:
                self._renew(lease)

    def _renew(self, lease: HeldLease) -> None:
        try:
            ok = self.mailbox.renew(lease.session_key, lease.token)
        except redis.RedisError as exc:
            # Redis may be restarting: keep trying until the lease would have expired.
            if time.monotonic() - lease.renewed_at > self.mailbox.lease_ms / 1000.0:
                lease.lost.set()
            log.warning("lease renew failed", session_key=lease.session_key, error=str(exc))
            return
        if ok:
            lease.renewed_at = time.monotonic()
        else:
            log.warning("lease lost", session_key=lease.session_key)
            lease.lost.set()
