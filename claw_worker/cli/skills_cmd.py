"""``clawctl skills list|search|show|install|remove|install-builtin|list-builtin``.

Skills live in ``<workspace>/skills/<name>/`` (claw_worker/skills/). Installing from GitHub
downloads the repository's archive from ``skills.archive_base`` and takes one directory out
of it; every install and removal is all or nothing. Requirements are checked in this
command's environment: a worker started elsewhere checks its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click

from claw_worker.cli._common import CliError, confirm, load
from claw_worker.config.paths import workspace_dir
from claw_worker.skills.catalog import (
    BUILTIN_ROOT,
    MAX_SKILLS,
    Skill,
    checked_root,
    discover,
    discover_counted,
    find,
    listed,
    search,
    skills_root,
)
from claw_worker.skills.skillfile import MAX_SKILL_MD_BYTES, SKILL_FILE, SkillError

DESCRIPTION_WIDTH = 70
SHOWN_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except SkillError as exc:
        raise CliError(str(exc)) from None


def _workspace() -> Path:
    return workspace_dir(load())


def _root(workspace: Path | None = None) -> Path:
    """``<workspace>/skills``; an error when something else than a folder is there."""
    with _errors():
        return checked_root(workspace or _workspace())


def _source(skill: Skill) -> str:
    from claw_worker.skills.installer import SOURCE_FILE

    try:
        return str(json.loads((skill.path / SOURCE_FILE).read_text("utf-8")).get("source", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


def _short(text: str) -> str:
    return text if len(text) <= DESCRIPTION_WIDTH else text[: DESCRIPTION_WIDTH - 3] + "..."


def _as_json(skill: Skill, where: str) -> dict[str, object]:
    return {"name": skill.name, "where": where, "available": skill.available,
            "status": skill.status, "missing": list(skill.missing), "problem": skill.problem,
            "description": skill.description, "path": str(skill.path),
            "source": _source(skill) if where == "installed" else f"builtin:{skill.name}"}  # fmt: skip


@click.group()
def skills() -> None:
    """Skills: instructions and scripts for recurring tasks, in <workspace>/skills/."""


@skills.command("list")
@click.option("--json", "as_json", is_flag=True, help="Every field of every skill, as JSON.")
def list_cmd(as_json: bool) -> None:
    """Installed skills: available, or unavailable and why (missing programs or variables)."""
    root = _root()
    found, unread = discover_counted(root)
    if unread:  # on stderr: --json stays one document
        click.echo(f"Only the first {MAX_SKILLS} entries of {root} (by name) are read; "
                   f"{unread} more are not listed, nor offered to the model: move the "
                   "folders you do not use out of it.", err=True)  # fmt: skip
    if as_json:
        click.echo(json.dumps([_as_json(s, "installed") for s in found], indent=2))
        return
    if not found:
        click.echo(f"no skills in {root}; add the builtin ones with `clawctl skills "
                   "install-builtin --all` (see `clawctl skills list-builtin`)")  # fmt: skip
        return
    _table([("NAME", "STATUS", "DESCRIPTION"),
            *((s.name, s.status, _short(s.description)) for s in found)])  # fmt: skip
    if any(not s.available for s in found):
        click.echo("\nUnavailable skills are not offered to the model (requirements checked in "
                   "this environment; each worker checks its own).")  # fmt: skip


@skills.command("list-builtin")
@click.option("--json", "as_json", is_flag=True, help="Every field, as JSON.")
def list_builtin_cmd(as_json: bool) -> None:
    """The skills shipped with clawfleet (install with `clawctl skills install-builtin`)."""
    root = _root()
    builtin = discover(BUILTIN_ROOT)
    if as_json:
        click.echo(json.dumps([_as_json(s, "builtin") for s in builtin], indent=2))
        return
    rows = [("NAME", "INSTALLED", "DESCRIPTION")]
    rows += [(s.name, "yes" if (root / s.name).exists() else "no", _short(s.description))
             for s in builtin]  # fmt: skip
    _table(rows)


@skills.command("show")
@click.argument("name")
@click.option("--builtin", "builtin", is_flag=True, help="Show the builtin skill of that name.")
def show_cmd(name: str, builtin: bool) -> None:
    """Print a skill's SKILL.md (the installed one, else the builtin one)."""
    skill = None if builtin else listed(_root(), name)
    where = "installed"
    if skill is None:
        skill, where = find(BUILTIN_ROOT, name), "builtin"
    if skill is None:
        raise CliError(f"no skill {name!r} is installed or builtin (see `clawctl skills list`)")
    if not (skill.path / SKILL_FILE).is_file():  # missing, or a FIFO that would block
        raise CliError(f"{skill.path / SKILL_FILE} is not a regular file ({skill.status})")
    try:
        with open(skill.path / SKILL_FILE, "rb") as fh:
            data = fh.read(MAX_SKILL_MD_BYTES)
    except OSError as exc:
        raise CliError(f"cannot read {skill.path / SKILL_FILE}: {exc.strerror or exc}") from None
    click.echo(f"# {where} skill {skill.name} ({skill.status}): {skill.path}", err=True)
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    # Shown, never acted on: a downloaded SKILL.md may hold terminal control sequences.
    click.echo(SHOWN_CONTROL_RE.sub(lambda m: ascii(m.group())[1:-1], text))


@skills.command("search")
@click.argument("words", nargs=-1, required=True)
def search_cmd(words: tuple[str, ...]) -> None:
    """Installed and builtin skills whose name or description holds every word."""
    installed = discover(_root())
    names = {s.name for s in installed}
    builtin = [s for s in discover(BUILTIN_ROOT) if s.name not in names]
    where = {id(s): "installed" for s in installed} | {id(s): "builtin" for s in builtin}
    hits = search([*installed, *builtin], words)
    if not hits:
        click.echo(f"no skill matches {' '.join(words)!r}")
        return
    _table([("NAME", "WHERE", "STATUS", "DESCRIPTION"),
            *((s.name, where[id(s)], s.status, _short(s.description)) for s in hits)])  # fmt: skip


@skills.command("install")
@click.argument("spec", metavar="OWNER/REPO/PATH[@REF]")
@click.option("--force", is_flag=True, help="Replace an installed skill of the same name.")
def install_cmd(spec: str, force: bool) -> None:
    """Install a skill from a GitHub repository directory, e.g. owner/repo/skills/name@main.

    The repository's archive comes from skills.archive_base (codeload.github.com); REF is
    a branch, tag or commit (default: the default branch)."""
    from claw_worker.skills.github import parse_spec
    from claw_worker.skills.installer import install_github

    config = load()
    with _errors():
        parsed = parse_spec(spec)
        done = install_github(workspace_dir(config), parsed, config.skills, force=force)
    _report(done.name, done.path, done.replaced, done.source)


@skills.command("install-builtin")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every builtin skill not yet installed.")
@click.option("--force", is_flag=True, help="Replace installed skills of the same names.")
def install_builtin_cmd(names: tuple[str, ...], all_: bool, force: bool) -> None:
    """Copy builtin skills into the workspace (see `clawctl skills list-builtin`)."""
    from claw_worker.skills.installer import install_builtin

    if bool(names) == all_:
        raise CliError("name builtin skills to install, or pass --all (not both)")
    workspace = _workspace()
    wanted = names or tuple(s.name for s in discover(BUILTIN_ROOT))
    failed = []
    for name in wanted:
        if all_ and not force and (skills_root(workspace) / name).exists():
            click.echo(f"{name}: already installed, kept (--force replaces it)")
            continue
        try:
            done = install_builtin(workspace, name, force=force)
        except SkillError as exc:
            click.echo(f"{name}: {exc}", err=True)
            failed.append(name)
            continue
        _report(done.name, done.path, done.replaced, done.source)
    if failed:
        raise CliError(f"not installed: {', '.join(failed)}")


@skills.command("remove")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def remove_cmd(name: str, yes: bool) -> None:
    """Delete an installed skill from the workspace."""
    from claw_worker.skills.installer import remove

    workspace = _workspace()
    skill = listed(_root(workspace), name)
    if skill is None:
        raise CliError(f"no skill {name!r} is installed (see `clawctl skills list`)")
    if not yes:
        confirm(
            f"Remove the skill {name} ({skill.path})?",
            no_terminal=f"pass --yes to remove {skill.path}",
        )
    with _errors():
        path = remove(workspace, name)
    click.echo(f"removed {name} ({path})")


def _report(name: str, path: Path, replaced: bool, source: str) -> None:
    skill = find(path.parent, name)
    click.echo(f"{'replaced' if replaced else 'installed'} {name} from {source} in {path}")
    if skill is not None and not skill.available:
        click.echo(f"note: {name} is {skill.status}; it is not offered to the model until then")
