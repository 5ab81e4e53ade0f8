"""Settings the schema accepts but no code acts on yet, each with the reason.

``clawctl config check`` (and ``config set``) warn when the file sets one of these to
something other than its default, so nobody relies on a setting that does nothing. Keep
this list in step with the code: remove an entry in the change that starts using it.
"""

from __future__ import annotations

from typing import Any

from claw_worker.config.schema import Config

_TEXT = "no code shows this text yet"

# Dotted path (a field or a whole section) -> why it has no effect yet.
NOT_YET_ACTIVE: dict[str, str] = {
    "agents.defaults.texts.think_only_fallback": _TEXT,
    "agents.defaults.texts.subagents_none": _TEXT,
    "agents.defaults.texts.sessions_none": _TEXT,
    "agents.defaults.texts.unsupported_action": _TEXT,
    "agents.defaults.texts.system_rewrite_template": _TEXT,
}


def inactive_settings(config: Config) -> list[tuple[str, str]]:
    """(dotted path, reason) for each setting of ``config`` that differs from its default
    and has no effect yet; a section is reported by the fields set in it."""
    ours, defaults = config.model_dump(mode="json"), Config().model_dump(mode="json")
    found: list[tuple[str, str]] = []
    for dotted, reason in NOT_YET_ACTIVE.items():
        parts = dotted.split(".")
        found.extend(
            (path, reason) for path in _differences(_at(ours, parts), _at(defaults, parts), dotted)
        )
    return found


def _at(node: Any, parts: list[str]) -> Any:
    for part in parts:
        node = node[part]
    return node


def _differences(value: Any, default: Any, dotted: str) -> list[str]:
    if isinstance(value, dict) and isinstance(default, dict):
        return [
            path
            for key in value
            for path in _differences(value[key], default.get(key), f"{dotted}.{key}")
        ]
    return [dotted] if value != default else []
