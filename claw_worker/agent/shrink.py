"""Cutting a turn's own tool results when the model still refuses the request as too long.

Compacting the history (compaction.py) folds the turns before this one; it cannot shrink
what this turn's tool calls returned (several read_file or exec results of up to
``tools.max_output_chars`` each). Those calls have already run, so the turn must not restart
(their side effects would happen again): their results are cut instead, oldest first, and
the turn goes on where it was refused. Each call keeps its tool message, since the API
refuses a tool call without its answer, and the saved history holds the cut results, so
the next message does not hit the same wall.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from claw_worker.providers.base import ContextTooLong, ErrorKind

log = logging.getLogger(__name__)

Message = dict[str, Any]
T = TypeVar("T")
HEAD_CHARS = 1000  # of a cut result: enough to show what the output was
CUT_NOTE = (
    "[output cut to fit the model's context: %d characters left out; run the tool again "
    "with a narrower request if needed]"
)
# A result is cut only when that saves more than the note costs; a cut one (the head, a
# newline and the note) stays under this, so it is never cut again.
NOTE_ROOM = 200
# Refusals answered by cutting, per refused turn: each cuts the oldest half of the results
# not cut yet, the last one all of them. Bounded: every retry is a full request.
MAX_CUTS = 3


def _cuttable(message: Message) -> bool:
    content = message.get("content")
    return (
        message.get("role") == "tool"
        and isinstance(content, str)
        and len(content) > HEAD_CHARS + NOTE_ROOM
    )


def cut_tool_results(turn: list[Message], *, every: bool = False) -> int:
    """Cut, in place, the oldest half (rounded up; with ``every``, all) of the tool results
    in ``turn`` not cut yet to their first ``HEAD_CHARS`` characters and ``CUT_NOTE``;
    returns how many were cut. In place because the messages sent are the same dicts as the
    ones saved (``_Turn`` in loop.py), so both lists change at once."""
    big = [message for message in turn if _cuttable(message)]
    chosen = big if every else big[: (len(big) + 1) // 2]
    for message in chosen:
        content: str = message["content"]
        message["content"] = f"{content[:HEAD_CHARS]}\n{CUT_NOTE % (len(content) - HEAD_CHARS)}"
    return len(chosen)


def go_on_cutting(
    run: Callable[[], T], turn: list[Message], refused: ContextTooLong, *, retry_first: bool
) -> T:
    """``run()`` (the turn's model/tool loop, going on where it was) once more if
    ``retry_first`` (the history under it was just compacted), then after each refusal with
    the tool results of ``turn`` cut further (``cut_tool_results``), at most ``MAX_CUTS``
    times. Raises ``ContextTooLong`` once nothing is left to cut, saying so."""
    if retry_first:
        try:
            return run()
        except ContextTooLong as exc:
            refused = exc
    for attempt in range(1, MAX_CUTS + 1):
        cut = cut_tool_results(turn, every=attempt == MAX_CUTS)
        if not cut:
            if attempt == 1:  # no tool result of this turn is large: nothing here to shrink
                raise refused
            break
        log.info("context too long: cut %d of this turn's tool results, retrying", cut)
        try:
            return run()
        except ContextTooLong as exc:
            refused = exc
    raise ContextTooLong(
        f"still refused with this turn's tool results cut to {HEAD_CHARS} characters each: "
        f"{refused}",
        kind=ErrorKind.CONTEXT_TOO_LONG,
        status=refused.status,
    ) from refused
