"""What ``clawctl uninstall --purge`` removes, and the checks that keep it from removing
anything else.

It removes CLAW_HOME (the config, the environment file, the workspace, logs, the embedded
Redis's data, caches) and the configured workspace and logs directories when they live
elsewhere. Nothing else: a config file outside CLAW_HOME is left (and named), and it never
removes ``/``, a home directory or one above it, a top-level directory, a directory holding
this install or CLAW_HOME itself.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from claw_worker.cli._common import CliError
from claw_worker.config import Config
from claw_worker.config.paths import claw_home, config_path, logs_dir, workspace_dir
from claw_worker.embedded_redis import shutdown_serving

SHOWN_ENTRIES = 12


@dataclass(frozen=True)
class Target:
    path: Path
    what: str


@dataclass
class Plan:
    targets: list[Target]
    left: list[str]  # what stays, and why

    def describe(self) -> str:
        lines = ["--purge removes, for good:"]
        lines += [f"  {target.what}" for target in self.targets]
        lines += [f"Left in place: {note}" for note in self.left]
        return "\n".join(lines)


def plan(config: Config) -> Plan:
    """What to remove; a CliError when something configured must never be removed."""
    home = claw_home().absolute()
    problem = unsafe(home)
    if problem:
        raise CliError(f"refusing to purge CLAW_HOME {home}: {problem}")
    targets = []
    if os.path.lexists(home):
        targets.append(Target(home, f"CLAW_HOME {home}{_listing(home)}"))
    for what, path in (("workspace", workspace_dir(config)), ("logs", logs_dir(config))):
        path = path.absolute()
        if _inside(path, home) or not os.path.lexists(path):
            continue
        problem = unsafe(path, home=home)
        if problem:
            raise CliError(
                f"refusing to purge the {what} directory {path}: {problem}; "
                "remove what you want by hand"
            )
        shared = " (it may be shared with other hosts)" if what == "workspace" else ""
        targets.append(Target(path, f"the {what} directory {path}{shared}"))
    left = []
    config_file = config_path().absolute()
    if not _inside(config_file, home) and os.path.lexists(config_file):
        left.append(f"the config file {config_file} (outside CLAW_HOME; remove it by hand)")
    return Plan(targets, left)


def unsafe(path: Path, *, home: Path | None = None) -> str | None:
    """Why ``path`` must never be removed wholesale, or None."""
    real = Path(os.path.realpath(path))
    if real == Path("/"):
        return "it is the root directory"
    for user_home in _user_homes():
        if real == user_home:
            return f"it is the home directory {user_home}"
        if _inside(user_home, real):
            return f"it holds the home directory {user_home}"
    if len(real.parts) <= 2:
        return f"{real} is a top-level directory"
    install = Path(os.path.realpath(sys.prefix))
    if _inside(install, real):
        return f"it holds this clawfleet install ({install})"
    if home is not None and _inside(Path(os.path.realpath(home)), real):
        return f"it holds CLAW_HOME ({home})"
    return None


def stop_embedded_redis(config: Config) -> str | None:
    """Stop an embedded Redis still running on CLAW_HOME's data (not under systemd: one a
    CLI command started), so nothing writes there while it is removed."""
    if config.redis.url:
        return None
    pid = shutdown_serving(save=False)
    return None if pid is None else f"stopped the embedded Redis (pid {pid})"


def remove(target: Target) -> str:
    """Remove one target (a symlink: only the link); the line to report."""
    path = target.path
    if path.is_symlink():
        path.unlink()
        return f"removed {path} (the link only, not what it points to)"
    if not path.is_dir():
        path.unlink()
        return f"removed {path}"
    shutil.rmtree(path)
    return f"removed {path}"


def _listing(home: Path) -> str:
    try:
        entries = sorted(os.scandir(home), key=lambda e: e.name)
    except NotADirectoryError:
        return ""
    except OSError as exc:
        raise CliError(f"cannot list CLAW_HOME {home}: {exc.strerror}") from None
    names = [e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in entries]
    if not names:
        return " (empty)"
    more = f", and {len(names) - SHOWN_ENTRIES} more" if len(names) > SHOWN_ENTRIES else ""
    return ": " + ", ".join(names[:SHOWN_ENTRIES]) + more


def _user_homes() -> list[Path]:
    homes = [Path.home()]
    for name in (os.environ.get("SUDO_USER"), None):
        try:
            entry = pwd.getpwnam(name) if name else pwd.getpwuid(os.geteuid())
        except KeyError:
            continue
        homes.append(Path(entry.pw_dir))
    return list(dict.fromkeys(Path(os.path.realpath(h)) for h in homes))


def _inside(path: Path, parent: Path) -> bool:
    path, parent = Path(os.path.realpath(path)), Path(os.path.realpath(parent))
    return path == parent or parent in path.parents
