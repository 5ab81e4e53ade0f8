"""Stopping the ingress's long-running loops when a library swallowed their cancellation.

Python 3.11's ``asyncio.wait_for``, which redis-py wraps around every send when
``socket_timeout`` is set, can return normally when a cancel arrives just as the call it
waits for ends (gh-86296; rewritten on ``asyncio.timeout`` in 3.12). A loop that runs until
cancelled then runs on: seen when the ingress could not bind its port and shut down at once,
its delivery task renewing the lease for ever, the process never exiting and its Telegram
poller taking the chat's updates. Every such loop calls :func:`stop_if_cancelled` once a
turn, so a swallowed cancel still ends it within that turn.
"""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Raise CancelledError if the current task has been asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
