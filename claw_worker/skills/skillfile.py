"""``SKILL.md``: YAML front matter between ``---`` lines, then the instructions.

Accepted front matter (Agent Skills, OpenClaw, nanobot)::

    ---
    name: git-status                       # the skill's directory name
    description: Summarise a git checkout  # what the model sees in its list of skills
    requires: {bins: [git], env: [], anyBins: [], os: [linux]}       # clawfleet's spelling
    metadata: {"openclaw": {"requires": {"bins": ["git"]}, "os": ["linux"]}}   # OpenClaw
    metadata: {"nanobot": {"requires": {"bins": ["git"], "env": ["X"]}}}       # nanobot
    disable-model-invocation: true         # optional: never listed to the model
    ---

Requirements found under any of these spellings add up. Other keys (``license``,
``allowed-tools``, ``homepage``, ``requires.config``, ...) are accepted and ignored.

The front matter is parsed with PyYAML's safe loader (skills written for OpenClaw and
nanobot use quoted strings, folded descriptions and JSON-style flow maps; a hand-made subset
would refuse them), on a bounded text, and the result is walked with a node budget so that
aliases cannot blow up what later code iterates.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claw_worker.fsutil import read_regular

SKILL_FILE = "SKILL.md"
MAX_SKILL_MD_BYTES = 256 * 1024
MAX_FRONT_MATTER_CHARS = 32 * 1024
MAX_DESCRIPTION_CHARS = 4096
MAX_NODES = 5000  # mappings, lists and scalars in the parsed front matter, aliases counted
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: terminal control
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
NAMESPACES = ("clawfleet", "openclaw", "clawdbot", "nanobot")
OS_NAMES = {"linux": "linux", "darwin": "darwin", "macos": "darwin", "win32": "win32",
            "windows": "win32"}  # fmt: skip


class SkillError(Exception):
    """A skill that cannot be read, installed or run; the message says why."""


@dataclass(frozen=True)
class Requires:
    bins: tuple[str, ...] = ()  # every one must be on PATH
    any_bins: tuple[str, ...] = ()  # at least one must be on PATH
    env: tuple[str, ...] = ()  # every one must be set (and reach scripts)
    os: tuple[str, ...] = ()  # "linux", "darwin", "win32"; empty: any


@dataclass(frozen=True)
class SkillMeta:
    name: str
    description: str
    requires: Requires = field(default_factory=Requires)
    hidden: bool = False  # disable-model-invocation: kept out of the model's list


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def read_skill_md(path: Path) -> SkillMeta:
    """Parse the ``SKILL.md`` at ``path`` (a regular file of at most 256 KiB)."""
    if not os.path.lexists(path):
        raise SkillError(f"no {SKILL_FILE}")
    # A regular file inside its skill's folder: not a FIFO (it would block the open), not a
    # link leading out (to the worker's config, say).
    found = read_regular(path, MAX_SKILL_MD_BYTES + 1, Path(os.path.realpath(path.parent)))
    if found is None:
        raise SkillError(f"{SKILL_FILE} is not a regular file inside its skill's folder")
    data = found[0]
    if len(data) > MAX_SKILL_MD_BYTES:
        raise SkillError(f"{SKILL_FILE} is larger than {MAX_SKILL_MD_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkillError(f"{SKILL_FILE} is not UTF-8 text (byte {exc.start})") from None
    return parse_skill_md(text)


def split_front_matter(text: str) -> tuple[str, str]:
    """(front matter, body) of a SKILL.md text."""
    lines = text.removeprefix("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].rstrip() != "---":
        raise SkillError(f"{SKILL_FILE} must start with a '---' line that opens its front matter")
    size = 0
    for index, line in enumerate(lines[1:], 1):
        if line.rstrip() == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :])
        size += len(line)
        if size > MAX_FRONT_MATTER_CHARS:
            break
    raise SkillError(
        f"the front matter of {SKILL_FILE} is not closed by a '---' line "
        f"within {MAX_FRONT_MATTER_CHARS // 1024} KiB"
    )


def parse_skill_md(text: str) -> SkillMeta:
    import yaml  # here: `clawctl` imports this module for every command

    front, _ = split_front_matter(text)
    try:
        data = yaml.load(front, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 2}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SkillError(f"the front matter is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise SkillError("the front matter is nested too deeply") from None
    except Exception as exc:
        # PyYAML's constructors, given hostile scalars, raise ValueError (2024-02-30, a
        # 5,000-digit int), KeyError (!!bool maybe), AttributeError (!!timestamp soon),
        # IndexError (an empty !!int): all the same bad value to us.
        raise SkillError(
            f"the front matter has a value that cannot be read: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise SkillError("the front matter must be a mapping with name and description")
    _check_size(data)
    name = data.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise SkillError(
            f"name must be 1-64 letters, digits, '.', '_' or '-' starting with a letter or "
            f"digit (it names the skill's directory); got {_show(name)}"
        )
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillError("description must be a non-empty text (the model chooses by it)")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise SkillError(f"description is longer than {MAX_DESCRIPTION_CHARS} characters")
    description = " ".join(description.split())
    if control := CONTROL_RE.search(description):
        # YAML's "\e" and "\a" escapes: printed by `clawctl skills list`, an OSC 52
        # sequence would write the terminal's clipboard, ESC[2J clear the screen.
        raise SkillError(
            f"description holds the control character U+{ord(control.group()):04X}; "
            "write plain text"
        )
    hidden = data.get("disable-model-invocation", False)
    if not isinstance(hidden, bool):
        raise SkillError("disable-model-invocation must be true or false")
    return SkillMeta(name, description, _requires(data), hidden)


def _check_size(data: Any) -> None:
    """Count every value, aliases as often as they are used; iterative, since an alias can
    make a list or mapping hold itself (``&r [*r]``)."""
    stack = [data]
    budget = MAX_NODES
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise SkillError(f"the front matter has more than {MAX_NODES} values")
        if isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node


def _requires(data: dict[Any, Any]) -> Requires:
    """Every requirement block of the front matter, added up."""
    blocks: list[tuple[str, Any]] = [("requires", data.get("requires"))]
    os_blocks: list[tuple[str, Any]] = [("os", data.get("os"))]
    metadata = data.get("metadata")
    if isinstance(metadata, str) and metadata.strip().startswith("{"):
        try:  # OpenClaw asks for single-line JSON; a quoted one arrives as a string
            metadata = json.loads(metadata)
        except ValueError as exc:
            raise SkillError(f"metadata is not valid JSON: {exc}") from None
        except RecursionError:
            raise SkillError("metadata is JSON nested too deeply") from None
    if isinstance(metadata, dict):
        for ns in NAMESPACES:
            sub = metadata.get(ns)
            if isinstance(sub, dict):
                blocks.append((f"metadata.{ns}.requires", sub.get("requires")))
                os_blocks.append((f"metadata.{ns}.os", sub.get("os")))
    bins: list[str] = []
    any_bins: list[str] = []
    env: list[str] = []
    systems: list[str] = []
    for where, block in blocks:
        if block is None:
            continue
        if not isinstance(block, dict):
            raise SkillError(f"{where} must be a mapping like {{bins: [git], env: [TOKEN]}}")
        bins += _names(block.get("bins"), f"{where}.bins", _check_bin)
        any_bins += _names(block.get("anyBins", block.get("any_bins")), f"{where}.anyBins",
                           _check_bin)  # fmt: skip
        env += _names(block.get("env"), f"{where}.env", _check_env)
        os_blocks.append((f"{where}.os", block.get("os")))
    for where, value in os_blocks:
        systems += _names(value, where, _check_os)
    return Requires(*(tuple(dict.fromkeys(v)) for v in (bins, any_bins, env, systems)))


def _names(value: Any, where: str, check: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise SkillError(f"{where} must be a list of names")
    return [check(item.strip(), where) for item in items]


def _check_bin(name: str, where: str) -> str:
    if not name or len(name) > 200 or not name.isprintable() or " " in name:
        raise SkillError(f"{where}: {_show(name)} is not a program name")
    return name


def _check_env(name: str, where: str) -> str:
    if not ENV_RE.fullmatch(name):
        raise SkillError(f"{where}: {_show(name)} is not an environment variable name")
    return name


def _check_os(name: str, where: str) -> str:
    system = OS_NAMES.get(name.lower())
    if system is None:
        raise SkillError(f"{where}: {_show(name)} is not one of linux, darwin, win32")
    return system


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
