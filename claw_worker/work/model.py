"""A pipeline and its tasks as data, and the check of a requested plan.

``make_pipeline`` validates what the agent asked for (unique task ids, known dependencies, no
cycle, the config's limits) and names what is wrong; the changes of state are in
``transitions.py``.

Task states: ``pending`` (a dependency is not done yet) → ``ready`` (all done) → ``running``
(its run was submitted) → ``done`` or ``failed``; a task downstream of a failed one is
``blocked``. A pipeline is ``pending`` until first dispatched, ``running``, then ``done``
(every task done) or ``failed`` (nothing left to run and something failed).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

PIPELINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
STATE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class PipelineError(ValueError):
    """A request about a pipeline that cannot be done; the message says why."""


class TaskState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"


OPEN_STATES = (TaskState.PENDING, TaskState.READY, TaskState.RUNNING)


class Task(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    role: str
    goal: str
    depends_on: list[str] = []
    state: TaskState = TaskState.PENDING
    attempt: int = 0  # runs submitted so far; a finish for another attempt is stale
    session_key: str = ""  # where the current run goes (its own, or a sub-agent's)
    message_id: str = ""
    result: str = ""
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


class Creator(BaseModel):
    """Who made the pipeline: its session, and the chat a person reads (told at the end)."""

    model_config = ConfigDict(extra="ignore")

    session_key: str = ""
    channel: str = ""
    chat_id: str = ""
    sender: str = ""  # whose daily token budget the tasks' runs are charged to (quotas.py)
    started_by: str = ""  # who started the creator's work (InboundMessage.started_by)


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    goal: str
    nonce: str  # new per pipeline: its task runs' message ids never meet an older namesake's
    auto_dispatch: bool = True
    depth: int = 0  # of the run that made it; its tasks run one deeper
    status: str = "pending"
    creator: Creator = Creator()
    owner: str = ""  # whose share of work.max_active_pipelines_per_sender it counts toward
    shared_state: dict[str, Any] = {}
    tasks: list[Task]
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        known = ", ".join(t.id for t in self.tasks)
        raise PipelineError(f"pipeline {self.id} has no task {task_id!r} (tasks: {known})")

    def dependents(self, task_id: str) -> list[Task]:
        return [t for t in self.tasks if task_id in t.depends_on]

    def count(self, state: TaskState) -> int:
        return sum(1 for t in self.tasks if t.state is state)


@dataclass(frozen=True)
class Limits:
    max_tasks: int
    max_result_chars: int
    max_shared_state_chars: int


def make_pipeline(
    *,
    pipeline_id: str,
    goal: str,
    tasks: list[dict[str, Any]],
    auto_dispatch: bool,
    depth: int,
    creator: Creator,
    limits: Limits,
    now: float,
) -> Pipeline:
    """A new pipeline, or PipelineError naming what is wrong with the request."""
    if not PIPELINE_ID.fullmatch(pipeline_id):
        raise PipelineError(
            f"pipeline id {pipeline_id!r} must be 1 to 40 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    if not goal.strip():
        raise PipelineError("the pipeline needs a goal")
    if not tasks:
        raise PipelineError("the pipeline needs at least one task")
    if len(tasks) > limits.max_tasks:
        raise PipelineError(
            f"{len(tasks)} tasks is more than work.max_pipeline_tasks ({limits.max_tasks})"
        )
    made: list[Task] = []
    for spec in tasks:
        task_id = str(spec.get("id", ""))
        if not TASK_ID.fullmatch(task_id):
            raise PipelineError(
                f"task id {task_id!r} must be 1 to 32 letters, digits, '-' or '_', starting "
                "with a letter or digit"
            )
        if any(t.id == task_id for t in made):
            raise PipelineError(f"two tasks have the id {task_id!r}; task ids must be unique")
        deps = list(dict.fromkeys(str(d) for d in spec.get("depends_on") or []))
        role, task_goal = str(spec["role"]).strip(), str(spec["goal"]).strip()
        for name, value in (("role", role), ("goal", task_goal)):
            if not value:
                raise PipelineError(f"task {task_id!r} needs a {name} (it is blank)")
        made.append(Task(id=task_id, role=role, goal=task_goal, depends_on=deps))
    ids = [t.id for t in made]
    for task in made:
        for dep in task.depends_on:
            if dep not in ids:
                raise PipelineError(
                    f"task {task.id!r} depends on {dep!r}, which is not a task of this "
                    f"pipeline (tasks: {', '.join(ids)})"
                )
    cycle = find_cycle({t.id: t.depends_on for t in made})
    if cycle:
        raise PipelineError(
            "the dependencies form a cycle, so no task of it could ever start: "
            + " → ".join(cycle)
            + " (A → B means A depends on B)"
        )
    for task in made:
        task.state = TaskState.PENDING if task.depends_on else TaskState.READY
    return Pipeline(
        id=pipeline_id, goal=goal.strip(), nonce=secrets.token_hex(4),
        auto_dispatch=auto_dispatch, depth=depth, creator=creator, tasks=made,
        created_at=now, updated_at=now,
    )  # fmt: skip


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A dependency cycle as a path that ends where it starts (``[A, B, A]``), or []."""
    color: dict[str, int] = dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 cleared
    path: list[str] = []

    def visit(node: str) -> list[str]:
        color[node] = 1
        path.append(node)
        for dep in graph.get(node, []):
            if color.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if color.get(dep) == 0:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        color[node] = 2
        return []

    for node in graph:
        if color[node] == 0:
            found = visit(node)
            if found:
                return found
    return []


def message_id(pipeline: Pipeline, task: Task) -> str:
    """The id of a task's run: one per attempt, so a repeated dispatch is dropped."""
    return f"pipeline-{pipeline.id}-{pipeline.nonce}-{task.id}-{task.attempt}"


def session_key(pipeline_id: str, task_id: str) -> str:
    return f"pipeline:{pipeline_id}:{task_id}"


def parse_session(session: str) -> tuple[str, str] | None:
    """(pipeline id, task id) of a task's own session, else None."""
    parts = session.split(":")
    if len(parts) == 3 and parts[0] == "pipeline" and PIPELINE_ID.fullmatch(parts[1]):
        return (parts[1], parts[2]) if TASK_ID.fullmatch(parts[2]) else None
    return None
