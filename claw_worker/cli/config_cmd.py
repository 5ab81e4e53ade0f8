"""``clawctl config get|set|check``: read and change the config file by dotted path.

``set`` edits the user's own JSON (not the defaulted model), so the file keeps only what the
user wrote; it validates the whole result before writing, and writes atomically with a
``.bak`` of the previous version. A refused value leaves the file untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args, get_origin

import click
from pydantic import BaseModel, ValidationError

from claw_worker.cli._common import CliError, current_path, load
from claw_worker.config.schema import Config
from claw_worker.config.store import (
    ConfigError,
    format_validation_error,
    get_path,
    mask_secrets,
    parse_config_text,
    parse_value,
    save_config_data,
    set_path,
    split_path,
)


def check_schema_path(dotted: str) -> list[str]:
    """The parts of ``dotted`` if it names a field of the schema; else a clear error.

    Walks the model classes rather than a dumped config so that named entries of a dict
    section (``providers.proxies.<name>.api_base``) are accepted before they exist.
    """
    try:
        parts = split_path(dotted)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    node: Any = Config
    walked: list[str] = []
    for part in parts:
        where = ".".join(walked) or "the top level"
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                raise CliError(
                    f"{dotted}: no field '{part}' under {where}; "
                    f"valid fields: {', '.join(sorted(fields))}"
                )
            node = fields[part].annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]  # any name is a valid key of a dict section
        else:
            raise CliError(f"{dotted}: {where} is a single value, not a section")
        walked.append(part)
    return parts


def read_user_data(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` as written ({} when missing).

    Schema errors are not raised here: ``set`` may be exactly how the user fixes them, and
    the result is validated as a whole before anything is written.
    """
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            parse_config_text(text, str(path))
        except ConfigError as exc:  # the same parse, for its clearer message
            raise CliError(f"{exc}\nFix the file by hand; nothing was changed.") from None
        raise  # pragma: no cover - parse_config_text always raises here
    if not isinstance(data, dict):
        raise CliError(f"{path}: the top level must be a JSON object; nothing was changed.")
    return data


def _problems(data: dict[str, Any]) -> str | None:
    try:
        Config.model_validate(data)
    except ValidationError as exc:
        return format_validation_error(exc)
    return None


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
    parts = split_or_fail(dotted)
    try:
        value = get_path(load(), dotted)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    click.echo(json.dumps(mask_secrets(value, parts[-1]), indent=2, ensure_ascii=False))


@config.command("set")
@click.argument("dotted", metavar="PATH")
@click.argument("raw", metavar="VALUE")
def set_cmd(dotted: str, raw: str) -> None:
    """Set PATH to VALUE (JSON when it parses as JSON, else a string)."""
    parts = check_schema_path(dotted)
    path = current_path()
    existed = path.exists()
    data = read_user_data(path)
    value = parse_value(raw)
    try:
        candidate = set_path(data, dotted, value)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    problems = _problems(candidate)
    if problems and not isinstance(value, str):
        # `config set gateway.token 12345` means the string "12345" to anyone typing it.
        as_text = set_path(data, dotted, raw)
        if _problems(as_text) is None:
            candidate, value, problems = as_text, raw, None
    if problems:
        raise CliError(f"cannot set {dotted}:\n{problems}\n{path} was not changed.")
    save_config_data(path, candidate)
    shown = json.dumps(mask_secrets(value, parts[-1]), ensure_ascii=False)
    backup = f"; previous version in {path.name}.bak" if existed else ""
    click.echo(f"{'.'.join(parts)} = {shown}  ({path}{backup})")


@config.command("check")
def check_cmd() -> None:
    """Validate the config file; exit 1 with the problems when it is invalid."""
    path = current_path()
    if not path.exists():
        click.echo(f"OK {path} (no file yet: all defaults; `clawctl onboard` creates it)")
        return
    load()
    click.echo(f"OK {path}")
