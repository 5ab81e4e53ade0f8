"""Installing and removing skills in ``<workspace>/skills/``, all or nothing.

A skill is first put together in ``skills/.install-<random>/`` (a dot-directory, so never
listed, and on the same filesystem, so the last step is a rename), checked (a SKILL.md with
valid front matter whose name is a safe directory name), and only then renamed to
``skills/<name>``. Replacing an installed skill (``force``) swaps the two directories in one
``renameat2(RENAME_EXCHANGE)`` where the filesystem has it, else renames the old one aside
first and back again if the second rename fails; the old copy is deleted only after the new
one is in place. A removal renames the skill aside, then deletes it. Whatever fails, the
staging directory goes and ``skills/`` is as it was; leftovers of a killed process (dot
directories over an hour old) are cleared by the next install.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from claw_worker.config.schema import SkillsConfig
from claw_worker.fsutil import atomic_write_bytes
from claw_worker.skills.archive import Limits, extract_skill
from claw_worker.skills.catalog import BUILTIN_ROOT, checked_root, listed, skills_root
from claw_worker.skills.github import SkillSpec, download
from claw_worker.skills.skillfile import SKILL_FILE, SkillError, read_skill_md, valid_name

SOURCE_FILE = ".clawfleet-source.json"  # where an installed skill came from
_TEMP_PREFIXES = (".install-", ".old-", ".remove-")
_STALE_SEC = 3600
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    replaced: bool
    source: str


def install_github(
    workspace: Path, spec: SkillSpec, config: SkillsConfig, *, force: bool = False
) -> Installed:
    root = _prepare(workspace)
    limits = Limits(config.max_archive_entries, config.max_unpacked_bytes, config.max_skill_bytes)
    with tempfile.TemporaryFile() as archive:
        download(spec, config, archive)
        archive.seek(0)
        with _staging(root) as staging:
            commit = extract_skill(archive, spec.path, staging, limits)
            source = {"source": str(spec), "commit": commit}
            return _commit(root, staging, source, force)


def install_builtin(workspace: Path, name: str, *, force: bool = False) -> Installed:
    src = BUILTIN_ROOT / name
    if not valid_name(name) or not (src / SKILL_FILE).is_file():
        raise SkillError(f"there is no builtin skill {name!r} (see `clawctl skills list-builtin`)")
    root = _prepare(workspace)
    with _staging(root) as staging:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(src, staging, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        return _commit(root, staging, {"source": f"builtin:{name}", "version": _version()}, force)


def remove(workspace: Path, name: str) -> Path:
    """Delete the installed skill ``name``; its former path."""
    root = skills_root(workspace)
    missing = SkillError(f"no skill {name!r} is installed in {root}")
    if listed(root, name) is None and not (valid_name(name) and (root / name).is_symlink()):
        raise missing
    target = root / name
    trash = root / f".remove-{os.urandom(4).hex()}"
    try:
        os.rename(target, trash)
    except FileNotFoundError:  # removed (or replaced) meanwhile by another command
        raise missing from None
    _delete(trash)
    return target


def _prepare(workspace: Path) -> Path:
    root = checked_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    for path in _stale_temporaries(root):
        _delete(path)
    return root


def _stale_temporaries(root: Path) -> list[Path]:
    """Staging and removal folders an interrupted command left over ``_STALE_SEC`` ago."""
    now, stale = time.time(), []
    with os.scandir(root) as entries:
        for entry in entries:
            if not entry.name.startswith(_TEMP_PREFIXES):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # the command that made it finished meanwhile
            if age > _STALE_SEC:
                stale.append(Path(entry.path))
    return stale


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    try:
        yield staging
    finally:
        _delete(staging)


def _commit(root: Path, staging: Path, source: dict[str, str], force: bool) -> Installed:
    try:
        meta = read_skill_md(staging / SKILL_FILE)
    except SkillError as exc:
        raise SkillError(f"not a valid skill: {exc}") from None
    source["installed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _delete(staging / SOURCE_FILE)  # the install's own name: whatever the archive put there
    atomic_write_bytes(staging / SOURCE_FILE, (json.dumps(source) + "\n").encode(), mode=0o644)
    os.chmod(staging, 0o755)  # mkdtemp made it 0700
    target = root / meta.name
    exists = target.exists() or target.is_symlink()
    if exists and not force:
        raise SkillError(
            f"a skill named {meta.name!r} is already installed; use --force to replace it"
        )
    if exists:
        _replace(staging, target, root)
    else:
        _install_new(staging, target)
    return Installed(meta.name, target, exists, source["source"])


def _install_new(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)
    except OSError as exc:  # created meanwhile by someone else
        raise SkillError(f"cannot install into {target}: {exc.strerror or exc}") from None


def _replace(staging: Path, target: Path, root: Path) -> None:
    """Put ``staging`` at ``target``; afterwards ``staging`` is gone, with the old skill.
    An old skill removed meanwhile (``clawctl skills remove`` at the same moment) leaves
    nothing to replace: the new one is put in its place."""
    old = root / f".old-{target.name}-{os.urandom(4).hex()}"
    try:
        if _exchange(staging, target):
            return  # staging now holds the old skill: the caller's clean-up deletes it
        os.rename(target, old)
    except FileNotFoundError:
        _install_new(staging, target)
        return
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    _delete(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    kernel, libc or filesystem (NFS) cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _delete(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _version() -> str:
    try:
        return version("clawfleet")
    except PackageNotFoundError:
        return ""
