"""Finding skills (``<workspace>/skills/<name>/SKILL.md`` and the builtin ones shipped in
``claw_worker/skills/builtin/``) and checking their requirements.

A skill is available when its SKILL.md parses, names its own directory, and every
requirement holds in this process: its OS, its programs on PATH, and its environment
variables set *in the environment its scripts get*. ``exec`` and ``skill_exec`` strip
anything that looks like a credential (``tools/shell.py`` child_env), so a skill that needs
``GITHUB_TOKEN`` is unavailable here rather than offered and then failing.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from claw_worker.skills.skillfile import (
    SKILL_FILE,
    Requires,
    SkillError,
    SkillMeta,
    read_skill_md,
    valid_name,
)

SKILLS_DIR = "skills"
BUILTIN_ROOT = Path(__file__).with_name("builtin")
MAX_SKILLS = 500  # directories looked at under skills/
_CACHE_SIZE = 1024
_cache: dict[str, tuple[tuple[int, ...], SkillMeta | SkillError]] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Skill:
    name: str  # its directory's name
    path: Path  # its directory
    meta: SkillMeta | None
    problem: str = ""  # why it is not a valid skill ("" when it is)
    missing: tuple[str, ...] = ()  # requirements that do not hold here

    @property
    def available(self) -> bool:
        return self.meta is not None and not self.problem and not self.missing

    @property
    def description(self) -> str:
        return self.meta.description if self.meta else ""

    @property
    def status(self) -> str:
        if self.problem:
            return f"invalid: {self.problem}"
        if self.missing:
            return "unavailable: missing " + ", ".join(self.missing)
        if self.meta is not None and self.meta.hidden:
            return "available, not listed to the model (disable-model-invocation)"
        return "available"


def skills_root(workspace: Path) -> Path:
    return workspace / SKILLS_DIR


def checked_root(workspace: Path) -> Path:
    """``<workspace>/skills``; a SkillError when something else than a folder is there."""
    root = skills_root(workspace)
    if os.path.lexists(root) and not root.is_dir():
        raise SkillError(f"{root} is not a directory; move it aside: skills are folders in it")
    return root


def discover(root: Path) -> list[Skill]:
    """Every skill directory under ``root`` by name; dot-directories (installs under way,
    removals) are not skills."""
    return discover_counted(root)[0]


def discover_counted(root: Path) -> tuple[list[Skill], int]:
    """:func:`discover`, and how many entries past the first ``MAX_SKILLS`` (by name) were
    not looked at."""
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return [], 0
    skills = []
    for name in names[:MAX_SKILLS]:
        path = root / name
        if path.is_dir():
            skills.append(load_dir(path))
    return skills, max(0, len(names) - MAX_SKILLS)


def find(root: Path, name: str) -> Skill | None:
    """The skill called ``name`` under ``root``, or None; ``name`` must be a valid name."""
    return listed(root, name) if valid_name(name) else None


def listed(root: Path, name: str) -> Skill | None:
    """The directory ``discover`` lists as ``name`` under ``root``, valid or not (one a
    user copied in as "Weather Skill" is shown, so it must be removable), or None."""
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        return None  # never skills/ itself, its parent, or an install or removal under way
    path = root / name
    return load_dir(path) if path.is_dir() else None


def load_dir(path: Path) -> Skill:
    name = path.name
    if not valid_name(name):
        return Skill(name, path, None, "the directory name is not a valid skill name")
    try:
        meta = _parse(path / SKILL_FILE)
    except SkillError as exc:
        return Skill(name, path, None, str(exc))
    if meta.name != name:
        return Skill(name, path, meta, f"its {SKILL_FILE} is named {meta.name!r}, not {name!r}")
    return Skill(name, path, meta, missing=tuple(missing_requirements(meta.requires)))


def missing_requirements(requires: Requires) -> list[str]:
    """What ``requires`` asks for that this process lacks, each as "bin git", "env X"..."""
    # Imported here: tools.shell pulls the tool registry in, which `clawctl skills` and
    # SKILL.md parsing do not otherwise need.
    from claw_worker.tools.shell import child_env

    missing = []
    here = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform, sys.platform)
    if requires.os and here not in requires.os:
        missing.append(f"os {'/'.join(requires.os)} (this is {here})")
    env = child_env()
    path = env.get("PATH", os.defpath)
    missing += [f"bin {b}" for b in requires.bins if shutil.which(b, path=path) is None]
    if requires.any_bins and not any(shutil.which(b, path=path) for b in requires.any_bins):
        missing.append("one of bins " + ", ".join(requires.any_bins))
    for name in requires.env:
        if env.get(name):
            continue
        if os.environ.get(name):
            missing.append(f"env {name} (withheld from scripts: it looks like a credential)")
        else:
            missing.append(f"env {name}")
    return missing


def search(skills: Iterable[Skill], words: Sequence[str]) -> list[Skill]:
    """Skills whose name or description holds every word (case-insensitive), best first:
    a word in the name counts twice."""
    terms = [w.casefold() for w in words if w.strip()]
    scored = []
    for skill in skills:
        name, text = skill.name.casefold(), skill.description.casefold()
        if all(t in name or t in text for t in terms):
            scored.append((-sum(2 if t in name else 1 for t in terms), skill.name, skill))
    return [skill for *_, skill in sorted(scored, key=lambda s: (s[0], s[1]))]


def _parse(path: Path) -> SkillMeta:
    """``read_skill_md`` cached by the file's identity, size and times: the system prompt
    lists the skills on every turn. The change time is part of the identity: a skill
    installed again is a new file that may get a freed inode back and, copied, the old
    mtime, and would be served what was cached for the old one (an error read while the
    old one was being swapped out)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SkillError(f"no {SKILL_FILE}") from None
    except OSError as exc:
        raise SkillError(f"cannot read {SKILL_FILE}: {exc.strerror or exc}") from None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _cache.get(str(path))
    if cached is not None and cached[0] == key:
        result = cached[1]
    else:
        try:
            result = read_skill_md(path)
        except SkillError as exc:
            result = exc
        with _cache_lock:
            if len(_cache) >= _CACHE_SIZE:
                _cache.clear()
            _cache[str(path)] = (key, result)
    if isinstance(result, SkillError):
        raise SkillError(str(result))
    return result
