"""``spawn``: start a sub-agent, an agent run in a session of its own on any worker of the
fleet; its result comes back to this session as a new message (``claw_worker/work/spawn.py``).
"""

from __future__ import annotations

from pydantic import Field

from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.work.origin import run_origin
from claw_worker.work.spawn import SpawnError, spawn


class SpawnParams(ToolParams):
    task: str = Field(min_length=1, max_length=8000, description="the job, self-contained")
    role: str | None = Field(None, max_length=200, description="e.g. 'researcher', 'reviewer'")
    pipeline_id: str | None = Field(
        None, max_length=40, description="a pipeline it works for (it sees its shared state)"
    )
    task_id: str | None = Field(
        None, max_length=32,
        description="a ready task of that pipeline for it to run: its result completes the task",
    )  # fmt: skip


class SpawnTool(Tool[SpawnParams]):
    name = "spawn"
    description = (
        "Start a sub-agent on a self-contained job; it works in parallel in a session of its "
        "own, and its result comes back to you as a new message (you need not wait for it). "
        "With pipeline_id and task_id it runs that pipeline task."
    )
    Params = SpawnParams

    def execute(self, params: SpawnParams, ctx: ToolContext) -> str:
        if ctx.redis is None:
            raise ToolError("spawn needs the fleet (no Redis connection in this run)")
        parent = run_origin(ctx.redis, ctx.session_key, ctx.message_id, ctx.origin)
        try:
            child = spawn(
                ctx.redis, ctx.config, parent, task=params.task.strip(),
                role=(params.role or "").strip(), pipeline_id=params.pipeline_id or "",
                task_id=params.task_id or "", sender=ctx.sender,
                started_by=ctx.started_by,
            )  # fmt: skip
        except SpawnError as exc:
            raise ToolError(f"sub-agent not started: {exc}") from None
        what = f" for task {child.task_id} of pipeline {child.pipeline_id}" if child.task_id else ""
        return (
            f"Started sub-agent {child.session_key}{' (' + child.role + ')' if child.role else ''}"
            f"{what}. Its result will come back to this session as a new message."
        )
