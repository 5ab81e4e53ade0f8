"""The one place tools are registered by name, and the one place they are run.

``ToolRegistry.run`` never raises: an unknown tool, arguments that do not validate, and any
exception inside a tool all come back as a result text starting with ``Error:``, so the
model can read what went wrong and correct itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from claw_worker import metrics
from claw_worker.config.schema import Config
from claw_worker.tools.base import Tool, ToolContext, ToolError
from claw_worker.tools.code import RepoMapTool
from claw_worker.tools.cron import CronTool
from claw_worker.tools.files import EditFileTool, ListFilesTool, ReadFileTool, WriteFileTool
from claw_worker.tools.message import MessageTool
from claw_worker.tools.nodes import NodesTool
from claw_worker.tools.pipelines import (
    PipelineCreateTool,
    PipelineDispatchTool,
    PipelineStateSetTool,
    PipelineStatusTool,
)
from claw_worker.tools.search import FindFilesTool, GrepFilesTool
from claw_worker.tools.shell import ExecTool
from claw_worker.tools.skills import SkillExecTool
from claw_worker.tools.spawn import SpawnTool
from claw_worker.tools.system import SystemInfoTool
from claw_worker.tools.web import WebFetchTool, WebSearchTool

log = logging.getLogger(__name__)


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        self._schemas: list[dict[str, Any]] | None = None
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool
        self._schemas = None

    def get(self, name: str) -> Tool[Any] | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        # Built once: pydantic's JSON schema generation is costly and the tools never change
        # after registration (it was a quarter of a worker's CPU per LLM call).
        if self._schemas is None:
            self._schemas = [tool.schema() for tool in self._tools.values()]
        return self._schemas

    def run(self, name: str, raw_args: str | Mapping[str, Any] | None, ctx: ToolContext) -> str:
        """Run a tool with the model's arguments (JSON text or a mapping); never raises.
        Counted per tool (an unknown name, the model's text, as ``unknown``)."""
        started = time.monotonic()
        result = self._run(name, raw_args, ctx)
        label = name if name in self._tools else "unknown"
        metrics.tool_call(label, not result.startswith("Error:"), time.monotonic() - started)
        return result

    def _run(self, name: str, raw_args: str | Mapping[str, Any] | None, ctx: ToolContext) -> str:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            shown = name if len(name) <= 64 else name[:64] + "…"  # the model's text: bounded
            return f"Error: unknown tool {shown!r}; available tools: {known}"
        try:
            args = _decode(raw_args)
            params = tool.Params.model_validate(args)
        except ToolError as exc:
            return f"Error: invalid arguments for {name}: {exc}"
        except ValidationError as exc:
            return f"Error: invalid arguments for {name}: {_describe(exc)}"
        try:
            result = tool.execute(params, ctx)
        except ToolError as exc:
            return f"Error: {exc}"
        except Exception as exc:  # a tool bug must not end the conversation
            log.exception("tool %s failed", name)
            return f"Error: {name} failed: {type(exc).__name__}: {exc}"
        return _cap(result, ctx.config.tools.max_output_chars)


def _decode(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ToolError(f"arguments are not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


def _describe(exc: ValidationError) -> str:
    """One ``field: problem`` per error, e.g. ``path: Field required``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [truncated: {len(text) - limit} more characters]"


def default_tools(config: Config) -> ToolRegistry:
    """Every built-in tool the config enables. Adding a tool: its module plus one line here."""
    tools: list[Tool[Any]] = [
        ReadFileTool(),
        WriteFileTool(),
        EditFileTool(),
        ListFilesTool(),
        FindFilesTool(),
        GrepFilesTool(),
        RepoMapTool(),
        # Registered even when unconfigured: the model then learns why it cannot search.
        WebSearchTool(),
        WebFetchTool(),
        SystemInfoTool(),
        MessageTool(config.channels),  # offers only the channels that can deliver
    ]
    if config.tools.exec.enabled:
        tools += [ExecTool(), SkillExecTool()]  # skill scripts are code too
    # Imported here: claw_worker.tools.memory imports tools.base, which loads this package.
    from claw_worker.tools.memory import MemorySearchTool, MemoryWriteTool

    tools += [MemorySearchTool(), MemoryWriteTool()]
    tools.append(CronTool())
    tools.append(NodesTool())
    tools += [PipelineCreateTool(), PipelineStatusTool(), PipelineStateSetTool()]
    tools += [PipelineDispatchTool(), SpawnTool()]
    return ToolRegistry(tools)
