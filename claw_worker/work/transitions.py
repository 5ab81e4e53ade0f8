"""Every change of a pipeline's state, as functions of a loaded pipeline (no I/O).

Each changes the pipeline in place and returns ``Changes``: what the caller must do next
(tasks to start, a report to send). The store (``pipelines.py``) runs each inside one
optimistic transaction, so concurrent finishes on different workers each see the other's
result, and a task both waited for is claimed once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from claw_worker.work.model import (
    OPEN_STATES,
    STATE_KEY,
    Limits,
    Pipeline,
    PipelineError,
    Task,
    TaskState,
    message_id,
    session_key,
)

# A shared_state value nested deeper is refused: pydantic reads JSON only to about 200
# levels, so a deeper one was stored and then made the whole pipeline unreadable.
MAX_STATE_NESTING = 32


@dataclass
class Changes:
    """What one transition did, for the caller to act on."""

    started: list[Task] = field(default_factory=list)  # claimed: submit their runs now
    failed: list[Task] = field(default_factory=list)  # newly failed (their dependents blocked)
    finished: bool = False  # the pipeline just finished: tell its chat
    changed: bool = False  # anything to write


def _start(pipeline: Pipeline, task: Task, now: float, session: str, mid: str) -> None:
    task.state = TaskState.RUNNING
    task.attempt += 1
    task.started_at = now
    task.session_key = session or session_key(pipeline.id, task.id)
    task.message_id = mid or message_id(pipeline, task)
    pipeline.status = "running"


def claim_ready(pipeline: Pipeline, now: float) -> Changes:
    """Every ready task becomes running: the caller submits their runs."""
    changes = Changes()
    if pipeline.finished:
        return changes
    for task in pipeline.tasks:
        if task.state is TaskState.READY:
            _start(pipeline, task, now, "", "")
            changes.started.append(task)
    changes.changed = bool(changes.started)
    return changes


def claim_task(pipeline: Pipeline, task_id: str, now: float, session: str, mid: str) -> Task:
    """One ready task becomes running, in a sub-agent's session (``spawn`` with a task)."""
    task = pipeline.task(task_id)
    if task.state is not TaskState.READY:
        waits = [d for d in task.depends_on if pipeline.task(d).state is not TaskState.DONE]
        why = f"it waits for {', '.join(waits)}" if task.state is TaskState.PENDING else ""
        raise PipelineError(
            f"task {task_id} of pipeline {pipeline.id} is {task.state.value}, not ready"
            + (f": {why}" if why else "")
        )
    _start(pipeline, task, now, session, mid)
    return task


def finish(
    pipeline: Pipeline,
    task_id: str,
    attempt: int,
    *,
    ok: bool,
    text: str,
    limits: Limits,
    now: float,
    message_id: str = "",
) -> Changes:
    """A task's run is over (``text`` is its result, or the error when not ``ok``).

    A finish for a task that is not running, or for another attempt (or, when given,
    another message: a late run of an expired namesake pipeline's task), is stale and
    changes nothing. A done task makes the dependents whose dependencies are all
    done ready (and, with auto_dispatch, starts them); a failed one blocks everything
    downstream of it. The pipeline finishes once nothing is left to run.
    """
    changes = Changes()
    task = pipeline.task(task_id)
    if task.state is not TaskState.RUNNING or task.attempt != attempt:
        return changes
    if message_id and message_id != task.message_id:
        return changes
    changes.changed = True
    task.finished_at = now
    if ok:
        task.state = TaskState.DONE
        task.result = _cut(text.strip(), limits.max_result_chars)
        for other in pipeline.tasks:
            if other.state is TaskState.PENDING and all(
                pipeline.task(d).state is TaskState.DONE for d in other.depends_on
            ):
                other.state = TaskState.READY
    else:
        task.state = TaskState.FAILED
        task.error = _cut(text.strip() or "failed", limits.max_result_chars)
        changes.failed.append(task)
        _block_downstream(pipeline, task.id, now)
    if pipeline.auto_dispatch:
        changes.started = claim_ready(pipeline, now).started
    changes.finished = settle(pipeline, now)
    return changes


def cancel(pipeline: Pipeline, now: float, reason: str) -> Changes:
    """Every open task ends: a running one fails with ``reason`` (``changes.failed``: the
    caller stops its run, whose late finish is then stale), the others are blocked."""
    if pipeline.finished:
        raise PipelineError(f"pipeline {pipeline.id} is already finished ({pipeline.status})")
    changes = Changes(changed=True)
    for task in pipeline.tasks:
        if task.state is TaskState.RUNNING:
            task.state, task.error = TaskState.FAILED, reason
            changes.failed.append(task)
        elif task.state in (TaskState.PENDING, TaskState.READY):
            task.state = TaskState.BLOCKED
        else:
            continue
        task.finished_at = now
    changes.finished = settle(pipeline, now)
    return changes


def _block_downstream(pipeline: Pipeline, task_id: str, now: float) -> None:
    todo = [task_id]
    while todo:
        for other in pipeline.dependents(todo.pop()):
            if other.state in (TaskState.PENDING, TaskState.READY):
                other.state = TaskState.BLOCKED
                other.finished_at = now
                todo.append(other.id)


def settle(pipeline: Pipeline, now: float) -> bool:
    """Mark the pipeline finished when no task is open; True if it just finished."""
    if pipeline.finished or any(t.state in OPEN_STATES for t in pipeline.tasks):
        return False
    all_done = all(t.state is TaskState.DONE for t in pipeline.tasks)
    pipeline.status = "done" if all_done else "failed"
    pipeline.finished_at = now
    return True


def set_state(pipeline: Pipeline, key: str, value: Any, limits: Limits) -> Changes:
    """Set (or, with None, remove) one key of the shared state, within its size limit."""
    if not STATE_KEY.fullmatch(key):
        raise PipelineError(f"state key {key!r} must be 1 to 64 letters, digits, '.', '-', '_'")
    if pipeline.finished:
        raise PipelineError(f"pipeline {pipeline.id} is finished ({pipeline.status})")
    if _nesting(value) > MAX_STATE_NESTING:
        raise PipelineError(
            f"the value is nested more than {MAX_STATE_NESTING} levels deep; keep it flat "
            "(a summary, a list of paths)"
        )
    state = dict(pipeline.shared_state)
    if value is None:
        state.pop(key, None)
    else:
        state[key] = value
    size = len(json.dumps(state, ensure_ascii=False))
    if size > limits.max_shared_state_chars:
        raise PipelineError(
            f"the shared state would be {size} characters, over work.max_shared_state_chars "
            f"({limits.max_shared_state_chars}); keep values short (a summary, a file path)"
        )
    pipeline.shared_state = state
    return Changes(changed=True)


def _nesting(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo += [
                (inner, level + 1) for inner in (item.values() if isinstance(item, dict) else item)
            ]
    return deepest


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... [cut: {len(text) - limit} more]"
