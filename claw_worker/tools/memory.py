"""The memory tools the model calls: ``memory_search`` and ``memory_write``."""

from __future__ import annotations

import sqlite3
from typing import Literal

from pydantic import Field

from claw_worker.memory import store
from claw_worker.memory.index import index_for
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

MAX_WRITE_CHARS = 8000  # one memory entry; a whole document belongs in a file, not a note


class MemorySearchParams(ToolParams):
    query: str = Field(min_length=1, max_length=2000, description="words to look for")
    limit: int = Field(5, ge=1, le=20, description="how many results")


class MemorySearchTool(Tool[MemorySearchParams]):
    name = "memory_search"
    description = (
        "Search long-term memory (profile, projects, procedures, dated notes) by keywords. "
        "Returns the best-matching passages with their file and heading."
    )
    Params = MemorySearchParams

    def execute(self, params: MemorySearchParams, ctx: ToolContext) -> str:
        try:
            mode = ctx.config.agents.defaults.memory.search
            hits = index_for(ctx.workspace).search(params.query, params.limit, mode=mode)
        except sqlite3.Error as exc:  # e.g. locked longer than the busy timeout, disk full
            raise ToolError(f"memory index unavailable: {exc}") from exc
        if not hits:
            return f"No memory matches {params.query!r}."
        lines = []
        for n, hit in enumerate(hits, 1):
            where = f"{hit.path} § {hit.heading}" if hit.heading else hit.path
            lines.append(f"{n}. [{where}] {hit.snippet}")
        return "\n".join(lines)


class MemoryWriteParams(ToolParams):
    layer: Literal["profile", "project", "procedures", "note"] = Field(
        description=(
            "profile: facts about the user; project: ongoing work and decisions; "
            "procedures: how to do things; note: anything else (today's dated note)"
        )
    )
    text: str = Field(min_length=1, max_length=MAX_WRITE_CHARS, description="what to remember")


class MemoryWriteTool(Tool[MemoryWriteParams]):
    name = "memory_write"
    description = "Save something to long-term memory so it can be recalled in later conversations."
    Params = MemoryWriteParams

    def execute(self, params: MemoryWriteParams, ctx: ToolContext) -> str:
        if not params.text.strip():
            raise ToolError("text is blank")
        try:
            path = store.append(ctx.workspace, params.layer, params.text)
        except (ValueError, OSError) as exc:  # a layer file replaced by a link, a FIFO, ...
            raise ToolError(f"not saved: {exc}") from exc
        return f"Saved to {path.relative_to(ctx.workspace).as_posix()}"
