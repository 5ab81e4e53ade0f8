"""clawfleet worker package: the Celery app (``celery -A claw_worker``) and the agent runtime.

``app`` is resolved lazily: importing a submodule (the contract, the config, the CLI) never
reads the config file or builds the Celery app, so a broken config cannot break
``clawctl config check``, and the ingress stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from claw_worker.celery import app

        return app
    raise AttributeError(f"module 'claw_worker' has no attribute {name!r}")
