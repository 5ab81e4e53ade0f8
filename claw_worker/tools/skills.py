"""The ``skill_exec`` tool: run one script of an installed skill, start to finish, under the
same guards as ``exec``.

``skills/<name>/scripts/<script>`` runs in the skill's directory through
``tools/shell.py``'s ``run_guarded`` (the sandbox and resource limits of ``tools.exec``, the
reaper, the deadline, /stop, the output cap, the environment without credentials) after ``check_denied`` on its command line. The script is
a plain file name (no separators), must resolve to a regular file inside the skill after
symlinks, and the skill must be available (its requirements hold). The arguments are
passed as they are: the command line is quoted here, never parsed by a shell. Registered
only when ``tools.exec.enabled`` is true, since scripts are code.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from pydantic import Field, field_validator

from claw_worker.skills.catalog import discover, find, skills_root
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.shell import MAX_COMMAND_BYTES, check_denied, child_env, run_guarded

MAX_ARGS = 32
MAX_LISTED = 50  # script names shown when the one asked for is missing
MAX_ARG_CHARS = 4096
# Scripts without the executable bit run with the interpreter their extension names.
INTERPRETERS = {".sh": ("bash", "sh"), ".bash": ("bash",), ".py": ("python3",),
                ".js": ("node",), ".mjs": ("node",), ".rb": ("ruby",), ".pl": ("perl",)}  # fmt: skip


class SkillExecParams(ToolParams):
    name: str = Field(min_length=1, max_length=64, description="The skill (skills/<name>/).")
    script: str = Field(
        min_length=1,
        max_length=255,
        description="A file name in skills/<name>/scripts/, e.g. 'report.sh' (no directories).",
    )
    args: list[str] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="Arguments for the script, passed as they are (no shell parsing).",
    )
    timeout_sec: int | None = Field(
        None, ge=1, description="Seconds before it is killed (capped by tools.exec.timeout_sec)."
    )

    @field_validator("script")
    @classmethod
    def _check_script(cls, script: str) -> str:
        if any(c in script for c in "/\\\0") or script in (".", ".."):
            raise ValueError("must be a file name in the skill's scripts/ directory, no path")
        return script

    @field_validator("args")
    @classmethod
    def _check_args(cls, args: list[str]) -> list[str]:
        for index, arg in enumerate(args):
            if "\0" in arg:
                raise ValueError(f"argument {index + 1} contains a NUL character")
            if len(arg) > MAX_ARG_CHARS:
                raise ValueError(f"argument {index + 1} is longer than {MAX_ARG_CHARS} characters")
        return args


class SkillExecTool(Tool[SkillExecParams]):
    name = "skill_exec"
    description = (
        "Run a script of an installed skill (skills/<name>/scripts/<script>) with arguments, "
        "in the skill's directory, start to finish under the same guards as exec: a time "
        "limit, capped output, no secrets in its environment, nothing left running. Returns "
        "its output and exit code. $CLAW_WORKSPACE holds the workspace path. Read the "
        "skill's SKILL.md first. Offered only where exec is enabled (tools.exec.enabled)."
    )
    Params = SkillExecParams

    def execute(self, params: SkillExecParams, ctx: ToolContext) -> str:
        root = skills_root(ctx.workspace)
        skill = find(root, params.name)
        if skill is None:
            known = ", ".join(s.name for s in discover(root) if s.available) or "none"
            raise ToolError(f"no skill {params.name!r} in skills/; available skills: {known}")
        if not skill.available:
            raise ToolError(f"skill {skill.name!r} cannot run here: {skill.status}")
        script = _script(skill.path, params.script)
        command = shlex.join([*_launcher(script, params.script), *params.args])
        if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
            raise ToolError(
                f"the arguments make a command line over {MAX_COMMAND_BYTES} bytes; pass "
                "long content in a file (write_file) and its path as the argument"
            )
        cfg = ctx.config.tools.exec
        check_denied(command, cfg.deny_patterns)
        timeout = min(params.timeout_sec or cfg.timeout_sec, cfg.timeout_sec)
        env = {"CLAW_WORKSPACE": str(ctx.workspace), "SKILL_DIR": str(skill.path)}
        return run_guarded(command, skill.path, timeout, cfg.max_output_chars, ctx, env)


def _script(skill_dir: Path, name: str) -> Path:
    """``scripts/<name>`` of the skill, resolved: a regular file inside the skill."""
    scripts = skill_dir / "scripts"
    try:
        real = (scripts / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise ToolError(
            f"no script {name!r} in skills/{skill_dir.name}/scripts/; there: {_listing(scripts)}"
        ) from None
    if not real.is_relative_to(skill_dir.resolve()):
        raise ToolError(f"scripts/{name} leads outside the skill {skill_dir.name!r}; refused")
    if not real.is_file():
        raise ToolError(f"scripts/{name} is not a regular file")
    return real


def _listing(scripts: Path) -> str:
    """The first MAX_LISTED names in ``scripts/``, and how many more (errors are not capped,
    and a skill may generate thousands)."""
    try:
        with os.scandir(scripts) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError:
        return "nothing"
    more = len(names) - MAX_LISTED
    shown = ", ".join(names[:MAX_LISTED]) or "nothing"
    return shown + (f", and {more} more" if more > 0 else "")


def _launcher(script: Path, name: str) -> list[str]:
    """How to start the script: itself when executable, else its extension's interpreter."""
    relative = f"./scripts/{name}"
    if os.access(script, os.X_OK):
        return [relative]
    path = child_env().get("PATH", os.defpath)
    for program in INTERPRETERS.get(script.suffix.lower(), ()):
        if shutil.which(program, path=path):
            return [program, relative]
    raise ToolError(
        f"scripts/{name} is not executable and no interpreter for {script.suffix or 'it'} "
        "was found on PATH (.sh, .py, .js, .rb and .pl are known)"
    )
