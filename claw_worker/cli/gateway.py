"""``clawctl gateway ...``: run the fleet on this machine."""

from __future__ import annotations

import sys

import click

from claw_worker.cli.autonomy_cmd import autonomy


@click.group()
def gateway() -> None:
    """Run and manage the gateway fleet (ingress, workers, beat)."""


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
