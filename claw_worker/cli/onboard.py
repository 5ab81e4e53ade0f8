"""``clawctl onboard``: create the config and the workspace; safe to run again at any time.

``AGENTS.md``, ``SOUL.md`` and ``USER.md`` carry a managed block that a re-run rewrites to
the current template; the user's text around the block is kept. Other workspace files are
created when missing and never overwritten.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import click

from claw_worker.cli._common import CliError, current_path, describe_error, unusable_home
from claw_worker.config import Config, ConfigError, apply_env_overrides, load_config, workspace_dir
from claw_worker.config.jsontext import JsonTextError, decode
from claw_worker.config.paths import claw_home
from claw_worker.config.store import atomic_write_text
from claw_worker.embedded_redis import socket_problem
from claw_worker.workspace import (
    MANAGED_FILES,
    SEED_FILES,
    WORKSPACE_DIRS,
    make_workspace,
    template,
)

BLOCK_START = "<!-- CLAWFLEET MANAGED BLOCK START -->"
BLOCK_END = "<!-- CLAWFLEET MANAGED BLOCK END -->"
# A new config holds only the fields a user fills next, so the file shows where they go.
STARTER_CONFIG = {"providers": {"proxy": {"api_base": "", "api_key": "", "models": []}}}


def managed_block(text: str) -> str:
    """The block (markers included) out of a template."""
    start, end = text.index(BLOCK_START), text.index(BLOCK_END) + len(BLOCK_END)
    return text[start:end]


def sync_block(existing: str, block: str, name: str) -> str:
    """``existing`` with its managed block replaced by ``block`` (appended when absent)."""
    starts, ends = existing.count(BLOCK_START), existing.count(BLOCK_END)
    if starts == 0 and ends == 0:
        if not existing.strip():
            return block + "\n"
        return existing.rstrip("\n") + "\n\n" + block + "\n"
    start, end = existing.find(BLOCK_START), existing.find(BLOCK_END)
    if starts != 1 or ends != 1 or end < start:
        raise CliError(
            f"{name}: the managed block markers are broken (need exactly one "
            f"'{BLOCK_START}' followed by one '{BLOCK_END}'). Fix or remove them and run "
            "`clawctl onboard` again; nothing was changed."
        )
    return existing[:start] + block + existing[end + len(BLOCK_END) :]


@dataclass
class Change:
    path: Path
    text: str | None  # None: a directory
    verb: str  # created / updated


def plan_workspace(workspace: Path) -> tuple[list[Change], list[Path]]:
    """What to write, computed in full before anything is written (so a broken file stops
    the run with nothing half done), and what is already up to date."""
    changes: list[Change] = []
    kept: list[Path] = []
    for directory in WORKSPACE_DIRS:
        path = workspace / directory
        if path.is_dir():
            kept.append(path)
        else:
            changes.append(Change(path, None, "created"))
    for name in MANAGED_FILES:
        path = workspace / name
        fresh = template(name)
        if not path.exists():
            changes.append(Change(path, fresh, "created"))
            continue
        try:
            current = decode(path.read_bytes())
        except JsonTextError as exc:
            raise CliError(
                f"{path}: {exc}, then run `clawctl onboard` again; nothing was changed."
            ) from None
        synced = sync_block(current, managed_block(fresh), str(path))
        if synced == current:
            kept.append(path)
        else:
            changes.append(Change(path, synced, "updated (managed block)"))
    for target, name in SEED_FILES.items():
        path = workspace / target
        if path.exists():
            kept.append(path)
        else:
            changes.append(Change(path, template(name), "created"))
    return changes, kept


def ensure_config(path: Path) -> tuple[str, Path]:
    """Create the config file when missing; keep (and check) an existing one."""
    if path.exists():
        try:
            config = load_config(path)
        except ConfigError as exc:
            raise CliError(
                f"the existing config is invalid, so onboard leaves it alone:\n"
                f"{describe_error(exc)}"
            ) from None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)  # it may hold API keys
            return f"kept (permissions tightened from {mode:o} to 600)", workspace_dir(config)
        return "kept", workspace_dir(config)
    atomic_write_text(path, json.dumps(STARTER_CONFIG, indent=2) + "\n", mode=0o600)
    return "created", workspace_dir(load_config(path))


def _redis_url(path: Path) -> str:
    """redis.url as the fleet will see it (the file, if any, then CLAW_REDIS_URL)."""
    try:
        config = load_config(path) if path.exists() else Config()
        return apply_env_overrides(config).redis.url
    except ConfigError:
        return ""  # ensure_config reports a broken file


@click.command()
def onboard() -> None:
    """Create the config file and the workspace (safe to re-run)."""
    home = claw_home()
    path = current_path()
    problem = socket_problem()
    if problem and not _redis_url(path):
        raise CliError(f"{problem} Nothing was created.")
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CliError(unusable_home(home, str(exc.strerror or exc))) from None
    config_state, workspace = ensure_config(path)
    click.echo(f"config     {path} ({config_state})")

    changes, kept = plan_workspace(workspace)
    make_workspace(workspace)
    for change in changes:
        if change.text is None:
            change.path.mkdir(parents=True, exist_ok=True)
        else:
            change.path.parent.mkdir(parents=True, exist_ok=True)
            # A rewrite keeps the user's permissions on their file.
            exists = change.path.exists()
            mode = stat.S_IMODE(change.path.stat().st_mode) if exists else 0o644
            atomic_write_text(change.path, change.text, mode=mode)
        click.echo(f"{change.verb:<10} {change.path}")
    if kept:
        click.echo(f"unchanged  {len(kept)} workspace entries in {workspace}")

    click.echo(
        "\nNext steps:\n"
        "  1. Point clawfleet at your LLM: `clawctl login`, or\n"
        "     `clawctl config set providers.proxy.api_base http://HOST:PORT/v1`,\n"
        "     `clawctl config set providers.proxy.api_key KEY` and\n"
        "     `clawctl config set providers.proxy.models '[\"MODEL\"]'`\n"
        '  2. Try it: `clawctl agent -m "Hello"`\n'
        "  3. Run the fleet: `clawctl gateway run`"
    )
