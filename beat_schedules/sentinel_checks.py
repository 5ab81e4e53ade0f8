"""The Sentinel's checks of this host's files: the config, the workspace, the logs directory
and free disk. Each is a small function of a :class:`Probe` returning a :class:`Finding`;
with ``probe.heal`` it repairs what it safely can and says what it did in ``healed``.
The fleet's checks (Redis, queues, processes, sessions) are in ``sentinel_fleet.py``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from claw_worker.config import (
    Config,
    ConfigError,
    apply_env_overrides,
    claw_home,
    config_path,
    load_config,
    logs_dir,
    workspace_dir,
)
from claw_worker.log_files import LogsDir
from claw_worker.workspace import create_missing, missing_entries

MB = 1024 * 1024
RELOAD_GRACE_SEC = 60  # a config file newer than this may be in the middle of a reload


@dataclass(frozen=True)
class Finding:
    state: str  # ok | warn | fail
    detail: str
    healed: str = ""  # what was repaired ("" when nothing was)


def ok(detail: str) -> Finding:
    return Finding("ok", detail)


def warn(detail: str, healed: str = "") -> Finding:
    return Finding("warn", detail, healed)


def fail(detail: str, healed: str = "") -> Finding:
    return Finding("fail", detail, healed)


@dataclass
class Probe:
    """What every check gets: the worker's Redis client, the live config, whether to heal."""

    redis: redis.Redis
    config: Config
    heal: bool
    now: float = field(default_factory=time.time)


def check_config(p: Probe) -> Finding:
    """The config file still loads; it is the one the fleet runs with (after a grace
    period: `clawctl config set` reloads the fleet right after writing it); and the alerts'
    channel is one that runs."""
    path = config_path()
    try:
        on_disk = apply_env_overrides(load_config(path))
    except ConfigError as exc:
        return fail(f"{path} does not load, so no process could restart: {exc}"[:600])
    if on_disk != p.config and path.exists() and p.now - path.stat().st_mtime > RELOAD_GRACE_SEC:
        return warn(f"{path} changed since this worker loaded it: run `clawctl config reload`")
    channel = p.config.sentinel.notify_channel
    if channel and channel != "ws" and not getattr(p.config.channels, channel).enabled:
        return warn(f"alerts go to channel {channel}, which is not enabled: they are dropped")
    return ok(f"{path} is valid")


def check_workspace(p: Probe) -> Finding:
    """The workspace is a writable directory holding AGENTS.md, SOUL.md, USER.md, memory/
    and skills/; missing ones are recreated from the templates (as `clawctl onboard`)."""
    ws = workspace_dir(p.config)
    if ws.exists() and not ws.is_dir():
        return fail(f"{ws} is not a directory (move it away; nothing was changed)")
    if ws.is_dir() and not os.access(ws, os.W_OK | os.X_OK):
        return fail(f"{ws} is not writable by this worker")
    missing = missing_entries(ws)
    if not missing:
        return ok(f"{ws} holds its files")
    detail = f"{ws}: missing {', '.join(missing)}" if ws.is_dir() else f"{ws} is missing"
    if not p.heal:
        return fail(detail)
    try:
        created = create_missing(ws)
    except OSError as exc:
        return fail(f"{detail}; could not recreate them: {exc}")
    return fail(detail, healed=f"recreated {', '.join(created) or 'the workspace'}")


def check_logs(p: Probe) -> Finding:
    """The logs directory exists (when file logging is on) and clawfleet's files there hold
    at most logs_max_mb; over it, rotated files (``<name>.log.<n>``) are pruned oldest first.
    A live ``<name>.log`` is never touched: its process writes to it. Only clawfleet's own
    files are counted or pruned (``claw_worker/log_files.py``): the directory may be shared
    with other programs' logs."""
    directory, limit = logs_dir(p.config), p.config.sentinel.logs_max_mb * MB
    if directory.exists() and not directory.is_dir():
        return fail(f"{directory} is not a directory (move it away; nothing was changed)")
    if not directory.is_dir():
        if not p.config.logging.enabled:
            return ok("file logging is off")
        detail = f"{directory} is missing: processes cannot reopen their log files"
        if not p.heal:
            return fail(detail)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return fail(detail, healed=f"recreated {directory}")
    with LogsDir(directory) as logs:
        files = logs.own_logs()
        total = sum(f.size for f in files)
        if total <= limit:
            return ok(f"{directory}: {total / MB:.1f} MB of {limit / MB:.0f} MB")
        detail = f"{directory} holds {total / MB:.1f} MB of logs, over {limit / MB:.0f} MB"
        if not p.heal:
            return warn(detail)
        pruned, freed = 0, 0
        for log in sorted((f for f in files if f.rotated), key=lambda f: f.mtime):
            if total - freed <= limit:
                break
            if logs.remove(log):  # False: gone or replaced since it was found
                pruned, freed = pruned + 1, freed + log.size
    if not pruned:
        return warn(f"{detail}; no rotated file to prune: the live logs fill it")
    left = "" if total - freed <= limit else f" (still {(total - freed) / MB:.1f} MB: live logs)"
    return warn(detail, healed=f"pruned {pruned} rotated log file(s), {freed / MB:.1f} MB{left}")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the filesystem it will live on)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(p: Probe) -> Finding:
    """Free disk where the workspace, the logs and $CLAW_HOME live: warn under
    min_free_mb, fail under half of it."""
    minimum = p.config.sentinel.min_free_mb * MB
    places = {"workspace": workspace_dir(p.config), "logs": logs_dir(p.config), "home": claw_home()}
    seen: dict[int, tuple[list[str], int]] = {}
    for name, path in places.items():
        where = _existing(path.expanduser())
        device = where.stat().st_dev
        if device in seen:
            seen[device][0].append(name)
        else:
            seen[device] = ([name], shutil.disk_usage(where).free)
    shown = "; ".join(f"{'/'.join(names)} {free / MB:.0f} MB free" for names, free in seen.values())
    lowest = min(free for _, free in seen.values())
    if lowest < minimum / 2:
        return fail(f"{shown} (under half of {minimum / MB:.0f} MB)")
    if lowest < minimum:
        return warn(f"{shown} (under {minimum / MB:.0f} MB)")
    return ok(shown)
