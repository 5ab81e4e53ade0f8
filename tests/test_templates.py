"""The workspace templates name only tools that exist: every backticked bare identifier in
``claw_worker/templates/*.md`` (``read_file``, ``exec``) is a tool ``default_tools`` can
register. Paths, settings and file names (``memory/``, ``tools.exec.enabled``,
``SOUL.md``) are not identifiers and are not checked."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from claw_worker.config import Config
from claw_worker.tools import default_tools

TEMPLATES = sorted(
    p.name
    for p in (resources.files("claw_worker") / "templates").iterdir()
    if p.name.endswith(".md")
)
TOOL_LIKE = re.compile(r"`([a-z][a-z0-9_]*)`")


def registrable_tools() -> set[str]:
    """Every tool some config registers (``exec`` only when enabled)."""
    config = Config.model_validate({"tools": {"exec": {"enabled": True}}})
    return set(default_tools(config).names)


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_mention_only_registered_tools(name: str) -> None:
    text = (resources.files("claw_worker") / "templates" / name).read_text(encoding="utf-8")
    mentioned = set(TOOL_LIKE.findall(text))
    assert mentioned - registrable_tools() == set(), f"{name} names tools that do not exist"


def test_agents_md_lists_every_tool() -> None:
    text = (resources.files("claw_worker") / "templates" / "AGENTS.md").read_text(encoding="utf-8")
    assert set(TOOL_LIKE.findall(text)) == registrable_tools()
