"""``clawctl uninstall [--purge] [--yes] [--remove-bin]``: undo ``clawctl gateway``.

Stops and disables the fleet's services and removes their unit files; ``--purge`` also
removes CLAW_HOME (config, workspace, logs, data) after listing it and asking (``--yes``
does not ask, and without a terminal it must be given), and refuses while a ``clawctl
gateway run`` runs on CLAW_HOME; ``--remove-bin`` removes this virtualenv's ``clawctl``,
``claw-ingress`` and ``claw-node`` commands. Each step says what it did; a step that fails
says so in one line and the others still run.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

import click

from claw_worker.cli._common import CliError, confirm, load
from claw_worker.cli._systemd import NOT_AVAILABLE, TARGET, Systemd, available
from claw_worker.config import Config

ENV_BIN_DIR = "CLAW_BIN_DIR"  # where this install's commands are (tests: a throwaway copy)
# Each command and the line its pip-generated script runs.
SCRIPTS = {
    "clawctl": "from claw_worker.cli import main",
    "claw-ingress": "from claw_ingress.__main__ import main",
    "claw-node": "from claw_node.__main__ import main",
}
MAX_SCRIPT_BYTES = 64 * 1024


@click.command()
@click.option("--purge", is_flag=True, help="Also remove config, workspace, logs and data.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --purge removes anything.")
@click.option("--remove-bin", is_flag=True, help="Also remove this install's commands.")
def uninstall(purge: bool, yes: bool, remove_bin: bool) -> None:
    """Remove the services `clawctl gateway` installed (and, on request, everything else)."""
    from claw_worker.cli import _purge

    sd = Systemd.here(require=False)
    failures: list[str] = []
    plan = config = None
    if purge:
        if not sd.user:
            from claw_worker.cli._gateway_install import adopt_sudo_home
            from claw_worker.cli.services import service_account

            note = adopt_sudo_home(service_account())
            if note:
                click.echo(note)
        _refuse_under_a_running_fleet()
        config = _config_or_defaults()
        plan = _purge.plan(config)
        if not plan.targets:
            click.echo("--purge: nothing to remove (CLAW_HOME does not exist)")
        else:
            click.echo(plan.describe())
            if not yes:
                confirm("Remove all of this?", no_terminal="pass --yes to remove it")

    failures += remove_services(sd)
    if plan is not None and config is not None:
        note = _purge.stop_embedded_redis(config)
        if note:
            click.echo(note)
        for target in plan.targets:
            try:
                click.echo(_purge.remove(target))
            except OSError as exc:
                failures.append(f"could not remove {target.path}: {exc.strerror or exc}")
                click.echo(f"error: {failures[-1]}", err=True)
        for note in plan.left:
            click.echo(f"left {note}")
    if remove_bin:
        failures += remove_commands()
    if failures:
        raise CliError(f"uninstall incomplete: {len(failures)} step(s) failed (see above)")


def _refuse_under_a_running_fleet() -> None:
    """A ``clawctl gateway run`` on this CLAW_HOME: refuse rather than stop it. It runs in
    the user's terminal, maybe with runs in progress; stopping it from here would end them
    behind the user's back, and removing its files under it leaves it crash-looping."""
    from claw_worker.cli._run_lock import holder, how_to_stop
    from claw_worker.config.paths import claw_home

    pid = holder()
    if pid is not None:
        raise CliError(
            f"`clawctl gateway run` (pid {pid or 'unknown'}) is running on this CLAW_HOME "
            f"({claw_home()}): {how_to_stop(pid)}, then run `clawctl uninstall --purge` again; "
            "nothing was changed"
        )


def remove_services(sd: Systemd) -> list[str]:
    """Stop, disable and remove the units; the failures, each reported in one line."""
    files = sd.ours()
    if not files:
        click.echo(f"services: none installed in {sd.dir}")
        return []
    failures = []
    running_systemd = available()
    if running_systemd:
        units = [*sd.installed_units(), TARGET]
        result = sd.run("disable", "--now", *units, check=False)
        if result.returncode == 0:
            click.echo(f"stopped and disabled {', '.join(units)}")
        else:
            failures.append(sd.failure(["systemctl", "disable", "--now", *units], result))
            click.echo(f"error: {failures[-1]}", err=True)
    else:
        click.echo(f"{NOT_AVAILABLE.split(':')[0]}: removing the unit files only")
    for path in files:
        try:
            path.unlink()
            click.echo(f"removed {path}")
        except OSError as exc:
            failures.append(f"could not remove {path}: {exc.strerror or exc}")
            click.echo(f"error: {failures[-1]}", err=True)
    with contextlib.suppress(OSError):  # what `disable` left: an empty .wants directory
        (sd.dir / f"{TARGET}.wants").rmdir()
    if running_systemd:
        result = sd.run("daemon-reload", check=False)
        if result.returncode != 0:
            failures.append(sd.failure(["systemctl", "daemon-reload"], result))
            click.echo(f"error: {failures[-1]}", err=True)
    return failures


def bin_dir() -> Path | None:
    """This virtualenv's bin directory (or $CLAW_BIN_DIR); None outside a virtualenv."""
    override = os.environ.get(ENV_BIN_DIR)
    if override:
        return Path(override).expanduser().absolute()
    if sys.prefix == sys.base_prefix:
        return None
    return Path(sys.prefix) / "bin"


def remove_commands() -> list[str]:
    """Remove the clawfleet entry-point scripts of this virtualenv; leave anything else."""
    pip = f"`{sys.executable} -m pip uninstall clawfleet`"
    where = bin_dir()
    if where is None:
        click.echo(
            f"--remove-bin: clawfleet is not installed in a virtualenv, so its commands "
            f"belong to pip: remove them with {pip}"
        )
        return []
    failures = []
    for name, line in SCRIPTS.items():
        path = where / name
        problem = _not_ours(path, line)
        if problem:
            click.echo(f"left {path}: {problem}")
            continue
        try:
            path.unlink()
            click.echo(f"removed {path}")
        except OSError as exc:
            failures.append(f"could not remove {path}: {exc.strerror or exc}")
            click.echo(f"error: {failures[-1]}", err=True)
    click.echo(f"The package itself stays installed: remove it with {pip}")
    return failures


def _not_ours(path: Path, line: str) -> str | None:
    """Why ``path`` is not clawfleet's entry-point script (so it stays), or None."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "not found"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    with open(path, "rb") as fh:
        head = fh.read(MAX_SCRIPT_BYTES)
    if not head.startswith(b"#!") or line.encode() not in head:
        return "not clawfleet's entry-point script"
    return None


def _config_or_defaults() -> Config:
    try:
        return load()
    except CliError:
        click.echo(
            "warning: the config cannot be read, so only CLAW_HOME is purged (a workspace or "
            "logs directory configured elsewhere is left)"
        )
        return Config()
