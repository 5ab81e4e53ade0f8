"""The worker's Celery consumer, patched to survive a Redis restart under running tasks.

Named in the Celery settings as ``worker_consumer``; only worker processes load it.
"""

from __future__ import annotations

import structlog
from celery.worker.consumer import Consumer as _CeleryConsumer

log = structlog.get_logger(__name__)


class Consumer(_CeleryConsumer):
    """Celery's consumer, surviving a broker restart while tasks run.

    With Celery 5.7 / kombu 5.7 on Redis, losing the broker while a task is unacked (always
    the case with ``task_acks_late`` and a run in progress) kills the worker: the cleanup
    first collects the connection, which fails half-way in the Redis ``Channel.close`` and
    then detaches the transport (``transport.client = None``); the channel, still open and
    holding the unacked messages, then needs that client to restore them on the second
    close, and again to ack a task that finishes later -> ``AttributeError: 'NoneType'
    object has no attribute 'hostname'``, an "Unrecoverable error" that stops the worker.

    Ignore that failure (the old connection is already dropped) and re-attach the client
    to the old transport, so the old channel can still ack its tasks once Redis is back.
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        transport = getattr(self.connection, "_transport", None)
        client = getattr(transport, "client", None)
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as err:
            log.warning("broker connection cleanup failed, reconnecting", error=repr(err))
        finally:
            if transport is not None and transport.client is None:
                transport.client = client
