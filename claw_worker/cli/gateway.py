"""``clawctl gateway ...``: the fleet as systemd services, or in the foreground.

``clawctl gateway`` (or ``gateway install``) writes and starts the systemd units (see
``services.py``); ``start|stop|restart|status`` drive them; ``run`` runs everything in the
foreground without systemd; ``autonomy`` switches autonomous mode at run time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from claw_worker.cli._common import CliError
from claw_worker.cli._systemd import PREFIX, Systemd
from claw_worker.cli.autonomy_cmd import autonomy
from claw_worker.cli.services import ROLES

INSTALL_OPTIONS = ("flower", "flower_port", "workers")


def install_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--flower", is_flag=True,
                     help="Also install Flower (needs FLOWER_BASIC_AUTH in the env file)."),
        click.option("--flower-port", default=5555, show_default=True,
                     type=click.IntRange(1, 65535), help="Flower's port on 127.0.0.1."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
                     help="Worker processes on this host (more than 1: clawfleet-worker@N)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@click.group(invoke_without_command=True)
@install_options
@click.pass_context
def gateway(ctx: click.Context, flower: bool, flower_port: int, workers: int) -> None:
    """Run and manage the gateway fleet (ingress, workers, beat).

    Alone: install the fleet as systemd services (user units, or system units when run as
    root or with sudo) and start them; safe to re-run. Secrets go in
    $CLAW_HOME/clawfleet.env, never in the units.
    """
    if ctx.invoked_subcommand is None:
        _install(flower, flower_port, workers)
        return
    given = [
        "--" + name.replace("_", "-")
        for name in INSTALL_OPTIONS
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    ]
    if given:
        raise CliError(
            f"{', '.join(given)} go with `clawctl gateway` alone (it installs the services), "
            f"not with `clawctl gateway {ctx.invoked_subcommand}`"
        )


@gateway.command("install")
@install_options
def install_cmd(flower: bool, flower_port: int, workers: int) -> None:
    """Install the fleet as systemd services and start them (same as `clawctl gateway`)."""
    _install(flower, flower_port, workers)


def _install(flower: bool, flower_port: int, workers: int) -> None:
    from claw_worker.cli._gateway_install import install

    install(flower=flower, flower_port=flower_port, workers=workers)


only_option = click.option(
    "--only",
    type=click.Choice(ROLES),
    help="Just this service (worker: every worker of this host).",
)


def installed(sd: Systemd, only: str | None) -> list[str]:
    """The installed services (or those of one role); a clear error when there are none."""
    units = sd.installed_units()
    if not units:
        raise CliError(
            f"the clawfleet services are not installed (no {PREFIX}.target in {sd.dir}): "
            "install them with `clawctl gateway`"
        )
    if only is None:
        return units
    chosen = [unit for unit in units if role_of(unit) == only]
    if not chosen:
        hint = "`clawctl gateway --flower`" if only == "flower" else "`clawctl gateway`"
        raise CliError(f"{PREFIX}-{only}.service is not installed (see {hint})")
    return chosen


def role_of(unit: str) -> str:
    return unit.removeprefix(f"{PREFIX}-").split("@")[0].split(".")[0]


def _drive(verb: str, done: str, only: str | None) -> None:
    sd = Systemd.here()
    units = installed(sd, only)
    sd.run(verb, *units)
    click.echo(f"{done} {', '.join(units)}")


@gateway.command("start")
@only_option
def start_cmd(only: str | None) -> None:
    """Start the installed services."""
    _drive("start", "started", only)


@gateway.command("stop")
@only_option
def stop_cmd(only: str | None) -> None:
    """Stop the services (the worker finishes its runs first, up to 60 s)."""
    _drive("stop", "stopped", only)


@gateway.command("restart")
@only_option
def restart_cmd(only: str | None) -> None:
    """Restart the services."""
    _drive("restart", "restarted", only)


@gateway.command("status")
@only_option
def status_cmd(only: str | None) -> None:
    """Each service's state; exits 1 when any is not running."""
    sd = Systemd.here()
    units = installed(sd, only)
    states = sd.states(units)
    width = max(len(unit) for unit in units) + 2
    click.echo(f"{'SERVICE':<{width}}{'STATE':<12}{'SUB':<14}PID")
    down = []
    for unit in units:
        state = states.get(unit, {})
        active = state.get("ActiveState") or "unknown"
        pid = state.get("MainPID", "")
        click.echo(f"{unit:<{width}}{active:<12}{state.get('SubState') or '-':<14}"
                   f"{pid if pid not in ('', '0') else '-'}")  # fmt: skip
        if active != "active":
            down.append(unit)
    if down:
        raise CliError(
            f"not running: {', '.join(down)}; see `{sd.journal_hint(down[0])}`, then "
            "`clawctl gateway start`"
        )


@gateway.command("run")
@click.option("--flower", is_flag=True, help="also run Flower (task monitor) on --flower-port")
@click.option("--flower-port", default=5555, show_default=True, type=click.IntRange(1, 65535))
def run_cmd(flower: bool, flower_port: int) -> None:
    """Run Redis (embedded if redis.url is empty), the ingress, a worker and beat in the
    foreground; restart any that dies; Ctrl-C stops them all."""
    from claw_worker.cli.supervisor import SupervisorError, run
    from claw_worker.config import ConfigError, current_config
    from claw_worker.embedded_redis import EmbeddedRedisError

    try:
        config = current_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        sys.exit(run(config, with_flower=flower, flower_port=flower_port, echo=click.echo))
    except (SupervisorError, EmbeddedRedisError) as exc:
        raise click.ClickException(str(exc)) from None


gateway.add_command(autonomy)
