"""The dispatch figures (total, ok, fail, avg_ms, top_action) from the ``claw:nodes:stats``
hash that ``audit.py`` updates per dispatch: cheaper than reading the audit file.

Pure functions of the hash's fields: the ingress (``/status``) and ``clawctl status`` read
the hash themselves and pass it in. Standard library only (the ingress imports this).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ACTION_FIELD = "action:"  # action:<name> -> how many dispatches of that action


def summarize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"total", "ok", "fail", "avg_ms", "top_action"}`` of the stats hash's fields."""

    def number(name: str) -> int:
        try:
            return int(raw.get(name) or 0)
        except (TypeError, ValueError):
            return 0

    total = number("total")
    actions = {
        name[len(ACTION_FIELD) :]: number(name) for name in raw if name.startswith(ACTION_FIELD)
    }
    # The most dispatched; a tie goes to the first name in alphabetical order.
    top = min(actions, key=lambda a: (-actions[a], a)) if actions else None
    return {
        "total": total,
        "ok": number("ok"),
        "fail": number("fail"),
        "avg_ms": round(number("ms") / total) if total else None,
        "top_action": top,
    }


def describe(summary: Mapping[str, Any]) -> str:
    """One line: ``5 dispatches (ok 4, fail 1), avg 12 ms, top action run``."""
    if not summary["total"]:
        return "no dispatches yet"
    return (
        f"{summary['total']} dispatches (ok {summary['ok']}, fail {summary['fail']}), "
        f"avg {summary['avg_ms']} ms, top action {summary['top_action']}"
    )
