"""clawfleet worker package: the Celery app (``celery -A claw_worker``) and the agent runtime.

Only the Celery app is imported here; the runtime (agent, providers, tools) loads lazily
in worker processes, so the ingress can import the app and the message contract cheaply.
"""

from claw_worker.celery import app

__all__ = ["app"]
