"""The skills part of the system prompt: the available skills' names and descriptions only.

The model reads a skill's SKILL.md with ``read_file`` when a task calls for it, so the
prompt grows by a line per skill, not by every skill's instructions. Skills whose
requirements do not hold here, invalid ones and ``disable-model-invocation`` ones are left
out: the model is never offered what cannot work.
"""

from __future__ import annotations

import logging
from pathlib import Path

from claw_worker.skills.catalog import discover, skills_root

log = logging.getLogger(__name__)

MAX_LISTED = 100
MAX_DESCRIPTION_CHARS = 300

HEADER = (
    "## Skills\n\n"
    "Skills are instructions, sometimes with scripts, for recurring tasks, kept in "
    "skills/<name>/ in the workspace. When a task matches a skill below, first read "
    "skills/<name>/SKILL.md with read_file and follow it ({baseDir} in it means "
    "skills/<name>). Run the scripts in skills/<name>/scripts/ with the skill_exec tool when "
    "you have it."
)


def skills_section(workspace: Path) -> str:
    """The "## Skills" block, or "" when no skill is available."""
    try:
        skills = [s for s in discover(skills_root(workspace)) if s.available]
    except OSError:  # an unreadable skills/ must not fail the turn
        log.warning("cannot list the skills in %s", workspace, exc_info=True)
        return ""
    lines = []
    for skill in skills:
        if skill.meta is None or skill.meta.hidden:
            continue
        text = skill.description
        if len(text) > MAX_DESCRIPTION_CHARS:
            text = text[: MAX_DESCRIPTION_CHARS - 1] + "…"
        lines.append(f"- {skill.name}: {text}")
    if not lines:
        return ""
    if len(lines) > MAX_LISTED:
        more = len(lines) - MAX_LISTED
        lines = [*lines[:MAX_LISTED], f"- ... and {more} more (list_files skills/)"]
    return HEADER + "\n\n" + "\n".join(lines)
