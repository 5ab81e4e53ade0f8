"""The beat sweeper: re-sends ``drain`` for sessions that have mail but nobody draining.

Covers a worker killed while holding a lease (once the lease expires) and an ingress that
died between storing a message and sending its wake-up task.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from claw_worker.session.mailbox import Mailbox

log = structlog.get_logger(__name__)


def sweep_dirty_sessions(
    mailbox: Mailbox, send_drain: Callable[[str, float], None], *, grace_sec: float
) -> int:
    """Send a drain for each idle session with waiting mail; forget clean sessions.

    Sessions enqueued to within ``grace_sec`` are left to the drain their enqueue pushed.
    """
    sent = 0
    for session_key, score in mailbox.stale_dirty_sessions(time.time() - grace_sec):
        held, waiting = mailbox.probe(session_key)
        if held:
            continue
        if not waiting:
            mailbox.forget_if_unchanged(session_key, score)
            continue
        mailbox.touch_dirty(session_key)
        send_drain(session_key, 0.0)
        sent += 1
    if sent:
        log.info("sweeper re-sent drains", sessions=sent)
    return sent
