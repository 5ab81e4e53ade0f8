"""``pipeline_create``, ``pipeline_status``, ``pipeline_state_set``, ``pipeline_dispatch``:
the agent splits work into tasks with a role, a goal and dependencies, run by other agent
runs across the fleet (``claw_worker/work/pipelines.py``).

Without ``pipeline_id`` the tools act on the run's own pipeline (a task's run, a sub-agent
working for one), else on the pipeline this session made last.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import Field

from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.work import pipelines, prompts
from claw_worker.work.model import Creator, PipelineError, make_pipeline
from claw_worker.work.origin import RunOrigin, load_for, root_session, run_origin
from claw_worker.work.transitions import set_state

PIPELINE_ID_FIELD = Field(
    None, max_length=40, description="the pipeline; default: your own, or the one made last here"
)


def _origin(ctx: ToolContext) -> RunOrigin:
    if ctx.redis is None:
        raise ToolError("pipelines need the fleet (no Redis connection in this run)")
    return run_origin(ctx.redis, ctx.session_key, ctx.message_id, ctx.origin)


def _pipeline_id(ctx: ToolContext, given: str | None) -> str:
    """The pipeline the tool acts on: the one named, if this run may use it (another chat's
    is not there for it), else the run's own or this session's latest."""
    origin = _origin(ctx)
    assert ctx.redis is not None
    if given:
        try:
            load_for(ctx.redis, origin, given)
        except PipelineError as exc:
            raise ToolError(str(exc)) from None
        return given
    found = origin.pipeline_id or pipelines.latest(ctx.redis, ctx.session_key)
    if not found:
        raise ToolError("no pipeline_id given, and this session has no pipeline; "
                        "pipeline_create makes one")  # fmt: skip
    return found


class TaskSpec(ToolParams):
    id: str = Field(min_length=1, max_length=32, description="short id: letters, digits, - _")
    role: str = Field(min_length=1, max_length=200, description="who does it, e.g. 'reviewer'")
    goal: str = Field(min_length=1, max_length=4000, description="what the task must produce")
    depends_on: list[str] = Field(
        [], max_length=32,
        description="ids of tasks that must be done first; their results are given to this one",
    )  # fmt: skip


class PipelineCreateParams(ToolParams):
    goal: str = Field(min_length=1, max_length=4000, description="what the whole pipeline is for")
    tasks: list[TaskSpec] = Field(min_length=1, max_length=100)
    pipeline_id: str | None = Field(
        None, max_length=40, description="an id to refer to it by (default: a new one)"
    )
    auto_dispatch: bool = Field(
        True, description="start each task once its dependencies are done (false: only on "
        "pipeline_dispatch or /pipeline ready)",
    )  # fmt: skip


class PipelineCreateTool(Tool[PipelineCreateParams]):
    name = "pipeline_create"
    description = (
        "Split work into tasks run by other agents in parallel across the fleet. Each task "
        "has an id, a role, a goal and depends_on (ids it needs first; their results are "
        "passed to it). Nothing starts until pipeline_dispatch; the chat is told when the "
        "pipeline finishes."
    )
    Params = PipelineCreateParams

    def schema(self) -> dict[str, Any]:
        """The task list's item schema written in place: some OpenAI-compatible proxies
        (Gemini behind CLIProxyAPI) refuse ``$ref``."""
        schema = super().schema()
        params = schema["function"]["parameters"]
        item = params.pop("$defs")["TaskSpec"]
        params["properties"]["tasks"]["items"] = item
        return schema

    def execute(self, params: PipelineCreateParams, ctx: ToolContext) -> str:
        origin = _origin(ctx)
        assert ctx.redis is not None
        work = ctx.config.work
        if origin.announcement:
            raise ToolError("this run answers a sub-agent's report, and a report may not "
                            "start a pipeline (that could loop)")  # fmt: skip
        if origin.depth + 1 > work.max_depth:
            raise ToolError(
                f"its tasks would run at depth {origin.depth + 1}, over work.max_depth "
                f"({work.max_depth}); do this work yourself"
            )
        if origin.task_id:  # as for spawn (work/spawn.py): the result would reach nobody
            raise ToolError(
                f"this run works for task {origin.task_id} of pipeline {origin.pipeline_id}: "
                "its final reply is the task's result, and a new pipeline's result would "
                "reach the chat after the task is over, not the tasks waiting for it; do this "
                "part yourself, or run another ready task of the pipeline with spawn's task_id"
            )
        try:
            pipeline = make_pipeline(
                pipeline_id=params.pipeline_id or f"p-{secrets.token_hex(4)}",
                goal=params.goal, tasks=[t.model_dump() for t in params.tasks],
                auto_dispatch=params.auto_dispatch, depth=origin.depth,
                creator=Creator(session_key=ctx.session_key, channel=origin.chat_channel,
                                chat_id=origin.chat_chat_id, sender=ctx.sender,
                                started_by=ctx.started_by),
                limits=pipelines.limits(ctx.config), now=time.time(),
            )  # fmt: skip
            pipeline.owner = ctx.sender or root_session(ctx.redis, ctx.session_key)
            pipelines.create(ctx.redis, ctx.config, pipeline)
        except PipelineError as exc:
            raise ToolError(f"pipeline not created: {exc}") from None
        ready = [t.id for t in pipeline.tasks if not t.depends_on]
        later = ("start by themselves when their dependencies are done" if params.auto_dispatch
                 else "start on pipeline_dispatch or /pipeline ready")  # fmt: skip
        return (
            f"Created pipeline {pipeline.id} with {len(pipeline.tasks)} task(s) "
            f"({', '.join(t.id for t in pipeline.tasks)}); ready to start: {', '.join(ready)}. "
            f"Start it with pipeline_dispatch (set shared facts first with pipeline_state_set "
            f"if the tasks need them); later tasks {later}."
        )


class PipelineRef(ToolParams):
    pipeline_id: str | None = PIPELINE_ID_FIELD


class PipelineStatusTool(Tool[PipelineRef]):
    name = "pipeline_status"
    description = "A pipeline's tasks: their state, role, dependencies and results."
    Params = PipelineRef

    def execute(self, params: PipelineRef, ctx: ToolContext) -> str:
        pipeline_id = _pipeline_id(ctx, params.pipeline_id)
        assert ctx.redis is not None
        try:
            pipeline = pipelines.reconcile(ctx.redis, ctx.config,
                                           pipelines.load(ctx.redis, pipeline_id))  # fmt: skip
        except PipelineError as exc:
            raise ToolError(str(exc)) from None
        return prompts.describe(pipeline)


class StateSetParams(ToolParams):
    key: str = Field(min_length=1, max_length=64, description="letters, digits, '.', '-', '_'")
    value: Any = Field(description="any JSON value; null removes the key")
    pipeline_id: str | None = PIPELINE_ID_FIELD


class PipelineStateSetTool(Tool[StateSetParams]):
    name = "pipeline_state_set"
    description = (
        "Set a key of a pipeline's shared_state: facts every task of it sees (tasks started "
        "after this see the new value)."
    )
    Params = StateSetParams

    def execute(self, params: StateSetParams, ctx: ToolContext) -> str:
        pipeline_id = _pipeline_id(ctx, params.pipeline_id)
        assert ctx.redis is not None
        bounds = pipelines.limits(ctx.config)
        try:
            pipeline, _ = pipelines.update(
                ctx.redis, ctx.config, pipeline_id,
                lambda p, _now: set_state(p, params.key, params.value, bounds),
            )  # fmt: skip
        except PipelineError as exc:
            raise ToolError(f"shared state not changed: {exc}") from None
        verb = "removed" if params.value is None else "set"
        return (f"{params.key} {verb} in pipeline {pipeline.id}'s shared state: "
                f"{prompts.shared_state_text(pipeline.shared_state)}")  # fmt: skip


class PipelineDispatchTool(Tool[PipelineRef]):
    name = "pipeline_dispatch"
    description = (
        "Start every task of a pipeline whose dependencies are done, each as an agent run of "
        "its own on the fleet."
    )
    Params = PipelineRef

    def execute(self, params: PipelineRef, ctx: ToolContext) -> str:
        pipeline_id = _pipeline_id(ctx, params.pipeline_id)
        assert ctx.redis is not None
        try:
            pipeline, started = pipelines.dispatch(ctx.redis, ctx.config, pipeline_id)
        except PipelineError as exc:
            raise ToolError(str(exc)) from None
        return prompts.started_text(pipeline, started)
