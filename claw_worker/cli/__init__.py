"""``clawctl``: the admin CLI. This module is the one place where command groups are wired.

Each command group lives in its own module; register it with one line in ``COMMANDS``. A
command's module is imported only when that command runs (or ``--help`` lists them all), and
command modules import heavy parts (the agent, the Celery app) inside their functions, so
``clawctl config check`` works, and starts fast, whatever state the rest is in.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import click

from claw_worker.cli._common import (
    EXPECTED_ERRORS,
    CliError,
    argument_problem,
    describe_error,
    internal_error,
)
from claw_worker.config.paths import ENV_CONFIG, home_problem

# Click's own ways of ending a command: they carry their message and exit status already.
CLICK_EXITS = (click.ClickException, click.exceptions.Exit, click.Abort)


class ClawGroup(click.Group):
    """The top group: the CLI boundary. Arguments that are not text are refused before any
    command runs; expected errors become one-line messages, anything else one "internal
    error" line; never a traceback unless --debug."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        problem = argument_problem(args, path_options=("--config",))
        if problem:
            raise CliError(problem)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            if debug:
                raise  # --debug: show the traceback
            raise CliError(describe_error(exc)) from None
        except CLICK_EXITS:
            raise
        except Exception as exc:
            if debug:
                raise
            raise CliError(internal_error(exc)) from None


class Clawctl(ClawGroup):
    """``clawctl``: its commands are loaded from ``COMMANDS`` when asked for, so a command
    imports its own module and not the others' (``clawctl config set`` never loads httpx)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attribute = spec.split(":")
        module = importlib.import_module(f"claw_worker.cli.{module_name}")
        command: click.Command = getattr(module, attribute)
        return command


@click.group(cls=Clawctl, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file to use (default: $CLAW_HOME/config.json).",
)
@click.option("--debug", is_flag=True, help="Verbose logs on stderr and full tracebacks.")
@click.version_option(package_name="clawfleet")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """clawfleet: an AI agent run as a Celery worker fleet on Redis."""
    from claw_worker.logs import setup_console

    # A path from the environment may hold bytes that are not UTF-8: show them escaped
    # rather than fail on output (stderr already does).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if config_file is not None:
        # Through the environment, so every process this command starts (workers, beat,
        # ingress) and every current_config() call reads the same file. Absolute, because
        # those processes may run in another directory.
        os.environ[ENV_CONFIG] = str(config_file.expanduser().absolute())
    problem = home_problem()
    if problem:
        raise CliError(problem)
    ctx.obj = {"debug": debug}
    setup_console(debug=debug)


# Each command's name and the "module:attribute" (under claw_worker.cli) that defines it.
COMMANDS = {
    "onboard": "onboard:onboard",
    "login": "login:login",
    "config": "config_cmd:config",
    "status": "status:status",
    "agent": "agent_cmd:agent",
    "gateway": "gateway:gateway",
    "channel": "channel_cmd:channel",
    "cron": "cron_cmd:cron",
    "pairing": "pairing_cmd:pairing",
    "nodes": "nodes_cmd:nodes",
    "skills": "skills_cmd:skills",
    "uninstall": "uninstall_cmd:uninstall",
}
