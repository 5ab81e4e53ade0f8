"""What pipeline tasks and sub-agents are told, and what people are told about them.

The texts of a task's run (its goal, its dependencies' results, the shared state) and of a
sub-agent's, the role section of their system prompt (``role_section``, read from the run's
message metadata by ``agent/context.py``), a pipeline's status, and the reports sent to the
chat that started the work.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from claw_worker.contract import REPORT_KIND
from claw_worker.work.model import Pipeline, Task, TaskState

GOAL_PREVIEW = 160
RESULT_PREVIEW = 200
LEAF_RESULT_CHARS = 3000  # each final result quoted in the report of a finished pipeline


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def shared_state_text(state: Mapping[str, Any]) -> str:
    return json.dumps(state, ensure_ascii=False, sort_keys=True) if state else "(empty)"


def task_text(pipeline: Pipeline, task: Task, *, limit: int, instructions: str = "") -> str:
    """The message a task's run gets: compact, the goal first, at most ``limit`` characters
    (quotas.max_message_chars, which the runner enforces): the quoted results and the shared
    state are cut to fair shares of what is left, saying so."""
    deps = [pipeline.task(dep_id) for dep_id in task.depends_on]
    after = [t.id for t in pipeline.dependents(task.id)]
    goes = (
        f"passed to the tasks that depend on yours ({', '.join(after)})"
        if after
        else "part of the pipeline's final result, sent to the chat that asked for it"
    )

    def compose(parts: list[str]) -> str:
        lines = [
            f"[pipeline {pipeline.id}, task {task.id}, role: {task.role}]",
            f"Pipeline goal: {pipeline.goal}",
            f"Your task: {task.goal}",
        ]
        if instructions:
            lines.append(f"Instructions from the agent that started you: {instructions}")
        if deps:
            lines += ["", "Results of the tasks yours depends on:"]
            for dep, result in zip(deps, parts, strict=False):
                lines += [f"--- {dep.id} ({dep.role}) ---", result]
        lines += ["", f"Shared state of the pipeline: {parts[-1]}"]
        lines += ["", f"Your final reply is your task's result: it is {goes}."]
        return "\n".join(lines)

    quoted = [dep.result or "(no result)" for dep in deps]
    return compose(fit_parts([*quoted, shared_state_text(pipeline.shared_state)], compose, limit))


def fit_parts(parts: list[str], compose: Callable[[list[str]], str], limit: int) -> list[str]:
    """``parts`` cut so that ``compose(parts)`` is at most ``limit`` characters: each gets a
    fair share of the room the rest leaves (a short one whole, what it leaves to the others)."""
    room = limit - len(compose(["" for _ in parts]))
    if sum(map(len, parts)) <= room:
        return parts
    caps, left = [0] * len(parts), max(room, 0)
    order = sorted(range(len(parts)), key=lambda i: len(parts[i]))
    for n, i in enumerate(order):
        caps[i] = min(len(parts[i]), left // (len(parts) - n))
        left -= caps[i]
    return [_cut_to(part, cap) for part, cap in zip(parts, caps, strict=True)]


def _cut_to(text: str, cap: int) -> str:
    """``text`` in at most ``cap`` characters, saying how much was cut when it was."""
    if len(text) <= cap:
        return text
    keep = max(0, cap - len(f"\n... [cut: {len(text)} more characters]"))
    if keep == 0:
        return text[:cap]
    return text[:keep] + f"\n... [cut: {len(text) - keep} more characters]"


def spawn_text(task: str, role: str, pipeline: Pipeline | None, *, limit: int) -> str:
    """The message of a sub-agent not bound to a pipeline task (at most ``limit``
    characters: a pipeline's shared state is cut to fit)."""

    def compose(parts: list[str]) -> str:
        lines = [f"[sub-agent{', role: ' + role if role else ''}]", f"Your task: {task}"]
        if pipeline is not None:
            lines += [f"Pipeline {pipeline.id} (goal: {pipeline.goal}); its shared state: "
                      f"{parts[0]}"]  # fmt: skip
        lines += ["", "Your final reply is your result: it is sent back to the agent that "
                      "started you."]  # fmt: skip
        return "\n".join(lines)

    state = shared_state_text(pipeline.shared_state) if pipeline is not None else ""
    return compose(fit_parts([state], compose, limit))


def role_section(metadata: Mapping[str, Any]) -> str:
    """The system prompt's part for a pipeline task or a sub-agent ("" for other runs)."""
    origin = metadata.get("origin")
    role = str(metadata.get("role") or "")[:200]
    if metadata.get("kind") == REPORT_KIND:  # a sub-agent's report, in the parent's session
        return ""
    if origin == "pipeline":
        return (
            "## Your part in shared work\n\n"
            f"You are the {role or 'worker'} of task {metadata.get('task_id')} of pipeline "
            f"{metadata.get('pipeline_id')}: other agents do the other tasks, on other "
            "workers. Your final reply is your task's result: it goes to the tasks that "
            "depend on yours, not to a person, so make it complete and self-contained; "
            "nobody will answer questions here. pipeline_state_set shares a fact with the "
            "other tasks; pipeline_status shows theirs."
        )
    if origin == "spawn":
        bound = ""
        if metadata.get("pipeline_id"):
            bound = f" You work for pipeline {metadata.get('pipeline_id')}"
            bound += f", task {metadata['task_id']}." if metadata.get("task_id") else "."
        return (
            "## Your part in shared work\n\n"
            f"You are a sub-agent{' working as ' + role if role else ''}, started by another "
            f"agent run for one job.{bound} Your final reply is your result: it is sent back "
            "to that run, not to a person, so make it complete and self-contained; nobody "
            "will answer questions here."
        )
    return ""


def _task_line(task: Task) -> str:
    deps = f" after {', '.join(task.depends_on)}" if task.depends_on else ""
    line = f"- {task.id} ({task.role}){deps}: {task.state.value}"
    if task.attempt > 1:
        line += f", attempt {task.attempt}"
    if task.state is TaskState.DONE and task.result:
        line += f" — {_one_line(task.result, RESULT_PREVIEW)}"
    elif task.state is TaskState.FAILED:
        line += f" — {_one_line(task.error, RESULT_PREVIEW)}"
    elif task.state is TaskState.BLOCKED:
        line += " — a task it depends on failed"
    return line


def describe(pipeline: Pipeline) -> str:
    """The status of a pipeline, a line per task."""
    done = pipeline.count(TaskState.DONE)
    lines = [
        f"Pipeline {pipeline.id}: {pipeline.status}, {done}/{len(pipeline.tasks)} tasks done"
        f"{'' if pipeline.auto_dispatch else ' (tasks start on /pipeline ready)'}",
        f"Goal: {_one_line(pipeline.goal, GOAL_PREVIEW * 2)}",
        *(_task_line(t) for t in pipeline.tasks),
        f"Shared state: {_one_line(shared_state_text(pipeline.shared_state), 600)}",
    ]
    return "\n".join(lines)


def summary_line(pipeline: Pipeline) -> str:
    done = pipeline.count(TaskState.DONE)
    return (
        f"{pipeline.id}: {pipeline.status}, {done}/{len(pipeline.tasks)} done — "
        f"{_one_line(pipeline.goal, GOAL_PREVIEW)}"
    )


def cancelled_text(pipeline: Pipeline, stopped: list[Task]) -> str:
    """What a cancel did."""
    halted = ", ".join(f"{t.id} ({t.role})" for t in stopped) or "none"
    never = [t.id for t in pipeline.tasks if t.state is TaskState.BLOCKED]
    return (
        f"Pipeline {pipeline.id} cancelled. Stopped: {halted}. "
        f"Not run: {', '.join(never) or 'none'}."
    )


def started_text(pipeline: Pipeline, started: list[Task]) -> str:
    """What a dispatch did, and what still waits."""
    if started:
        head = "Started: " + ", ".join(f"{t.id} ({t.role})" for t in started) + "."
    elif pipeline.finished:
        return f"Pipeline {pipeline.id} is finished ({pipeline.status}); nothing to start."
    else:
        head = "Nothing was ready to start."
    waiting = [t for t in pipeline.tasks if t.state in (TaskState.PENDING, TaskState.READY)]
    running = [t.id for t in pipeline.tasks if t.state is TaskState.RUNNING]
    lines = [head]
    if running:
        lines.append(f"Running: {', '.join(running)}.")
    for task in waiting:
        waits = [d for d in task.depends_on if pipeline.task(d).state is not TaskState.DONE]
        lines.append(f"{task.id} waits for {', '.join(waits) or 'a dispatch'}.")
    return "\n".join(lines)


def finish_notice(pipeline: Pipeline) -> str:
    """The report to the chat that made the pipeline, once nothing is left to run."""
    total, done = len(pipeline.tasks), pipeline.count(TaskState.DONE)
    if pipeline.status == "done":
        head = f"Pipeline {pipeline.id} finished: all {total} tasks done."
    else:
        failed, blocked = pipeline.count(TaskState.FAILED), pipeline.count(TaskState.BLOCKED)
        head = (f"Pipeline {pipeline.id} failed: {failed} task(s) failed, {blocked} blocked, "
                f"{done} of {total} done.")  # fmt: skip
    lines = [head, f"Goal: {_one_line(pipeline.goal, GOAL_PREVIEW * 2)}"]
    for task in pipeline.tasks:
        if task.state is TaskState.FAILED:
            lines.append(f"- {task.id} ({task.role}) failed: {_one_line(task.error, 400)}")
        elif task.state is TaskState.BLOCKED:
            lines.append(f"- {task.id} ({task.role}) not run: a task it depends on failed")
    leaves = [t for t in pipeline.tasks if t.state is TaskState.DONE and not
              pipeline.dependents(t.id)]  # fmt: skip
    for task in leaves:
        result = task.result[:LEAF_RESULT_CHARS]
        lines += [f"Result of {task.id} ({task.role}):", result]
    return "\n".join(lines)


def failure_notice(pipeline: Pipeline, failed: list[Task]) -> str:
    """A task failed while others still run: said at once, not only at the end."""
    lines = [f"Pipeline {pipeline.id}: " + "; ".join(
        f"task {t.id} ({t.role}) failed: {_one_line(t.error, 400)}" for t in failed)]  # fmt: skip
    blocked = [t.id for t in pipeline.tasks if t.state is TaskState.BLOCKED]
    running = [t.id for t in pipeline.tasks if t.state is TaskState.RUNNING]
    if blocked:
        lines.append(f"Not run because of it: {', '.join(blocked)}.")
    if running:
        lines.append(f"Still running: {', '.join(running)}.")
    return "\n".join(lines)


def announce_text(
    child_session: str, role: str, status: str, task: str, result: str, *, limit: int
) -> str:
    """The report a sub-agent's parent session gets as a new message (at most ``limit``
    characters: the result is cut to fit)."""
    who = f"sub-agent {child_session}{' (' + role + ')' if role else ''}"

    def compose(parts: list[str]) -> str:
        return "\n".join([
            f"[{who} finished: {status}]",
            f"The job you gave it: {_one_line(task, 300)}",
            "Its result:" if status == "done" else "What went wrong:",
            parts[0],
            "",
            "This is a sub-agent's report, not a message from the user: tell the user what "
            "matters in it. While answering a report you cannot start sub-agents or pipelines.",
        ])  # fmt: skip

    return compose(fit_parts([result], compose, limit))
