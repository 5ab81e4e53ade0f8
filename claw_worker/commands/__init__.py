"""Slash commands, answered out of band (by the ingress, and by `clawctl agent` locally):
they never wait behind the session's queue (``/stop`` ends the reply the queue is waiting
on; ``/status`` must answer while a run is busy). One registry (``registry.py``): a new
command is one ``@command`` function in one of this package's modules.

Commands that reach beyond the sender's own session (``/config``, ``/reload``,
``/autolearn``) are registered with ``admin="<why>"`` and run only for an admin (:attr:`CommandContext.admin`): the operator at
``clawctl agent``, or a sender :func:`is_admin` accepts. Everything else acts on the
sender's own session only (another session's runs are shown to admins only).
Natural-language requests are mapped onto these commands by :func:`match_intent`.
"""

from claw_worker.commands import admin, autonomy, pipelines, session  # noqa: F401 - they register
from claw_worker.commands.intents import match_intent
from claw_worker.commands.registry import (
    API_CHANNEL,
    COMMANDS,
    CommandContext,
    command,
    help_text,
    is_admin,
    parse_command,
    run_command,
)

__all__ = [
    "API_CHANNEL",
    "COMMANDS",
    "CommandContext",
    "command",
    "help_text",
    "is_admin",
    "match_intent",
    "parse_command",
    "run_command",
]
