"""The tool interface: a name, a description, a pydantic ``Params`` model and one ``execute``.

Tool instances are shared by every conversation a worker runs at once, so they hold no
per-chat state: everything about the current call arrives in the ``ToolContext``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import redis
from pydantic import BaseModel, ConfigDict

from claw_worker.config.schema import Config


class ToolParams(BaseModel):
    """Base of every tool's parameters: unknown arguments are errors the model gets to see.

    Not strict on purpose: models often send ``"5"`` for 5, and coercing that is kinder than
    a round trip to correct it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolError(Exception):
    """A failure the model should read (bad path, denied command); reported as ``Error: ...``."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class ToolContext:
    """Everything a tool may know about the call it serves, passed explicitly per call."""

    workspace: Path
    session_key: str
    config: Config
    should_stop: Callable[[], bool] = field(default=_never)
    # The fleet's Redis, for tools that talk to the rest of the fleet (``message``); None
    # when a tool runs outside a worker (tests, one-off CLI runs).
    redis: redis.Redis | None = None
    # The message this run answers: the same through retries and crash recovery, so a tool
    # that must act once per message keys its marks with it ("" outside a message's run).
    message_id: str = ""
    # Who put the run's message in the mailbox (contract.Origin).
    origin: str = "user"
    # Who started the work the run belongs to (``InboundMessage.started_by``): a cron job,
    # the heartbeat, ... for the fleet's own work and all it starts, which add no cron jobs;
    # the sub-agents and pipeline tasks this run starts carry it on.
    started_by: str = "user"
    # The sender (``channel:sender_id``) whose daily token budget this run is charged to
    # (claw_worker/quotas.py); the sub-agents and pipeline tasks it starts carry it on.
    sender: str = ""


P = TypeVar("P", bound=ToolParams)


class Tool(ABC, Generic[P]):
    name: str
    description: str
    Params: type[P]

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-tool entry, with parameters derived from ``Params``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": _strip_titles(self.Params.model_json_schema()),
            },
        }

    @abstractmethod
    def execute(self, params: P, ctx: ToolContext) -> str:
        """Do the work and return the result text; raise ``ToolError`` for expected failures."""


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's auto-generated ``title`` keys: they cost tokens and tell the model nothing."""
    if isinstance(schema, dict):
        return {
            key: _strip_titles(value)
            for key, value in schema.items()
            if not (key == "title" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema
