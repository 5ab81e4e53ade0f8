"""``clawctl config get|set|check|reload``: read and change the config by dotted path.

``set`` edits the user's own JSON (not the defaulted model), so the file keeps only what the
user wrote; it validates the whole result before writing, writes atomically with a ``.bak``
of the previous version, then reloads the running fleet (``config/fleet.py``). A refused
value leaves the file untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from claw_worker.cli._common import CliError, current_path, describe_error, load
from claw_worker.config.fleet import ChangeResult, change_config, reload_config
from claw_worker.config.inactive import inactive_settings
from claw_worker.config.local import check_local
from claw_worker.config.schema import Config
from claw_worker.config.store import (
    ConfigError,
    get_path,
    load_config,
    mask_secrets,
    parse_config_text,
    read_config_text,
    split_path,
)
from claw_worker.redact import Redactor


def split_or_fail(dotted: str) -> list[str]:
    try:
        return split_path(dotted)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


@click.group()
def config() -> None:
    """Read, change and check the config file."""


@config.command("get")
@click.argument("dotted", metavar="PATH")
def get_cmd(dotted: str) -> None:
    """Print the value at PATH (e.g. gateway.port) as JSON, secrets masked."""
    split_or_fail(dotted)
    try:
        value = get_path(load(environment=False), dotted)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    shown = json.dumps(mask_secrets(value, dotted), indent=2, ensure_ascii=False)
    # Fields marked secret are masked by name; a secret typed where no name says so (a
    # password in api_base's URL, a key in a text) by its shape.
    click.echo(Redactor().scrub(shown))


@config.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
@click.argument("pairs", metavar="PATH VALUE [PATH VALUE]...", nargs=-1, required=True)
def set_cmd(pairs: tuple[str, ...]) -> None:
    """Set PATH to VALUE (JSON when it parses as JSON, else a string) in the file and in
    every running process of the fleet; if one rejects it, the file is restored. Several
    pairs are set together, for settings valid only together (a heartbeat's target
    channel and chat)."""
    if len(pairs) % 2:
        raise CliError(
            f"config set takes PATH VALUE pairs; {pairs[-1]!r} has no value "
            "(quote a value with spaces: config set PATH 'two words')"
        )
    path = current_path()
    changes = list(zip(pairs[::2], pairs[1::2], strict=True))
    _report(lambda: change_config(path, changes), f"{path} was not changed.")
    warn_inactive(load_config(path), *(".".join(split_path(dotted)) for dotted, _ in changes))


@config.command("reload")
def reload_cmd() -> None:
    """Make every running process of the fleet (all hosts) take this config file, written
    into each host's file where that differs; report which applied it. If one rejects it,
    none applies it."""
    _report(lambda: reload_config(current_path()), "Nothing was reloaded.")


def _report(action: Callable[[], ChangeResult], unchanged: str) -> None:
    """Print the result of a fleet change; exit 1 with its message when it did not apply."""
    try:
        result = action()
    except ConfigError as exc:
        raise CliError(f"{exc}\n{unchanged}") from None
    if not result.ok:
        raise CliError(result.message)
    click.echo(result.message)


@config.command("check")
def check_cmd() -> None:
    """Validate the config file; exit 1 with the problems when it is invalid. Settings that
    have no effect yet are listed as warnings (exit 0)."""
    path = current_path()
    try:
        text = read_config_text(path)
        config = None if text is None else parse_config_text(text, str(path))
        if config is not None:
            check_local(config)  # the directories it names, on this host
    except ConfigError as exc:
        raise CliError(describe_error(exc)) from None
    if config is None:
        click.echo(f"OK {path} (no file yet: all defaults; `clawctl onboard` creates it)")
        return
    warn_inactive(config)
    click.echo(f"OK {path}")


def warn_inactive(config: Config, *unders: str) -> None:
    """A warning on stderr for each setting (at or below one of ``unders``; all without
    them) that is set but has no effect yet (config/inactive.py)."""
    for dotted, reason in inactive_settings(config):
        if not unders or any(
            dotted == under or dotted.startswith(under + ".") or under.startswith(dotted + ".")
            for under in unders
        ):
            click.echo(f"warning: {dotted} is set but has no effect yet: {reason}", err=True)
