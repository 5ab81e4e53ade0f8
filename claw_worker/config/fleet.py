"""Changing the config of a running fleet: edit the file, then reload every process.

Shared by ``clawctl config set|reload`` and the in-chat ``/config set`` and ``/reload``, so
a value means the same thing wherever it is typed. ``set`` validates the whole result,
writes the file atomically (the previous one kept as ``.bak``), then runs the two-phase
reload of ``reload.py``; if any process rejects it, the file is restored from the backup
and the answer names the process and its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from claw_worker.config import apply_env_overrides, jsontext
from claw_worker.config.local import check_local
from claw_worker.config.reload import ReloadBusy, ReloadOutcome, reload_fleet
from claw_worker.config.running import find_fleet, fleet_urls, other_config_files
from claw_worker.config.schema import Config
from claw_worker.config.store import (
    ConfigError,
    format_validation_error,
    load_config,
    mask_secrets,
    mask_url_password,
    parse_value,
    read_raw_data,
    restore_backup,
    save_config_data,
    set_path,
    split_path,
    validate_config_data,
)
from claw_worker.redis_conn import recorded_url, redis_url


@dataclass(frozen=True)
class ChangeResult:
    ok: bool
    message: str


def check_schema_path(dotted: str) -> list[str]:
    """The parts of ``dotted`` if it names a field of the schema; else a clear ConfigError.

    Walks the model classes rather than a dumped config so that named entries of a dict
    section (``providers.proxies.<name>.api_base``) are accepted before they exist.
    """
    parts = split_path(dotted)
    node: Any = Config
    walked: list[str] = []
    for part in parts:
        where = ".".join(walked) or "the top level"
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                raise ConfigError(
                    f"{dotted}: no field '{part}' under {where}; "
                    f"valid fields: {', '.join(sorted(fields))}"
                )
            node = fields[part].annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]  # any name is a valid key of a dict section
        else:
            raise ConfigError(f"{dotted}: {where} is a single value, not a section")
        walked.append(part)
    return parts


def _problems(data: dict[str, Any]) -> str | None:
    not_text = jsontext.problems(data)  # first: the schema cannot even read such a string
    if not_text:
        return "\n".join(not_text)
    try:
        Config.model_validate(data)
    except ValidationError as exc:
        return format_validation_error(exc)
    return None


def choose_values(
    data: dict[str, Any], pairs: list[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The values the ``(dotted, raw)`` pairs mean, set together, and the whole new data;
    ConfigError if the result is invalid. Together, because some settings are valid only in
    pairs (a heartbeat's target channel and chat), so no single step could set them.

    ``raw`` is JSON when it parses as JSON, else a string; but ``config set gateway.token
    12345`` means the string "12345" to anyone typing it, so a JSON number, true/false or
    null the schema refuses is tried as text, and kept as text when that leaves fewer
    problems. An object or an array never is: typed where text is wanted, it is a slip (or
    needs quoting as a JSON string), and the error says which type was given.
    """
    values: dict[str, Any] = {}
    for dotted, raw in pairs:
        if dotted in values:
            raise ConfigError(f"{dotted} is given twice: set each path once")
        values[dotted] = parse_value(raw)
    candidate = _with(data, values)
    problems = _problems(candidate)
    for dotted, raw in pairs:
        if problems and not isinstance(values[dotted], str | dict | list):
            as_text = {**values, dotted: raw}
            trial = _with(data, as_text)
            found = _problems(trial)
            if found is None or found.count("\n") < problems.count("\n"):
                values, candidate, problems = as_text, trial, found
    if problems:
        raise ConfigError(f"cannot set {', '.join(values)}:\n{problems}{_typed(values)}")
    return values, candidate


def _typed(values: dict[str, Any]) -> str:
    """A note for each value given as a JSON object or array, where the schema may want
    text (never repeating the value: it may be a secret)."""
    kinds = {dict: "a JSON object", list: "a JSON array"}
    notes = [
        f"\n{dotted}: the value given is {kinds[type(value)]}; to set text that looks like "
        """JSON, write it as a JSON string, e.g. '"{\\"a\\": 1}"'"""
        for dotted, value in values.items()
        if type(value) in kinds
    ]
    return "".join(notes)


def _with(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in values.items():
        data = set_path(data, dotted, value)
    return data


# How to reach a fleet that clawctl did not find where it looked.
POINT_AT_FLEET = (
    "If the fleet runs with CLAW_REDIS_URL in its environment (compose, a systemd unit), "
    "run clawctl with the same CLAW_REDIS_URL to reach it."
)


def no_fleet_found(config: Config, *before: Config) -> str:
    """Where the fleet was looked for (passwords masked), as the start of a sentence."""
    tried = ", ".join(mask_url_password(url) for url in fleet_urls(config, *before))
    return f"No running fleet found on {tried}"


class FleetElsewhere(Exception):
    """The fleet running on this host runs on other config files than the one changed."""


def reload_running(
    config: Config,
    changes: dict[str, Any] | None,
    path: Path,
    *before: Config,
    document: dict[str, Any] | None = None,
) -> ReloadOutcome | None:
    """Reload every running process (None: no fleet's Redis answers), through the Redis the
    fleet is on (``running.find_fleet``: ``before`` is the config before a change), with
    ``changes`` (a set) or ``document`` (a reload: the whole file). Refused with
    FleetElsewhere when the fleet on this host runs on other files than ``path``."""
    found = find_fleet(config, *before)
    if found is None:
        return None
    url, conn = found
    try:
        others = other_config_files(conn, path)
        if others:
            raise FleetElsewhere(
                f"Not applied to the running fleet: its processes on this host run on "
                f"{', '.join(others)}, not {path}."
            )
        outcome = reload_fleet(conn, changes, document=document)
    finally:
        conn.close()
    configured, *named_before = (redis_url(apply_env_overrides(c)) for c in (config, *before))
    if not (outcome.committed or outcome.failed or outcome.rejected or outcome.silent):
        outcome.note = f"{no_fleet_found(config, *before)}. {POINT_AT_FLEET}"
    elif url not in (configured, *named_before) and url == recorded_url():
        outcome.note = (
            f"Reached the fleet on {mask_url_password(url)}, the Redis its processes on "
            "this host recorded: neither the config nor CLAW_REDIS_URL here names it (the "
            "fleet's own environment gives it)."
        )
    elif url != configured:
        outcome.note = (
            f"The config names another Redis ({mask_url_password(configured)}) than "
            f"the one the running fleet is on ({mask_url_password(url)}): restart the "
            "fleet to move it."
        )
    return outcome


def change_config(path: Path, pairs: list[tuple[str, str]]) -> ChangeResult:
    """Set each ``(dotted, raw)`` of ``pairs`` in the file at ``path`` and in every running
    process, all together or none."""
    pairs = [(".".join(check_schema_path(dotted)), raw) for dotted, raw in pairs]
    if not path.parent.exists():  # a typo in --config: never make directories for it
        raise ConfigError(
            f"{path}: the directory {path.parent} does not exist: give the path of a config "
            "file in an existing directory (`clawctl onboard` creates a new $CLAW_HOME)"
        )
    existed = path.exists()
    data = read_raw_data(path)
    try:
        values, candidate = choose_values(data, pairs)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_already_invalid(path, data)}") from None
    check_local(validate_config_data(candidate, str(path)))  # a path this host cannot use
    # The config before the change: its Redis is the one a running fleet is on.
    before = () if _problems(data) else (validate_config_data(data, str(path)),)
    config = save_config_data(path, candidate)
    shown = [f"{dotted} = {json.dumps(mask_secrets(value, dotted), ensure_ascii=False)}"
             f"{_left_out(data, dotted, value)}" for dotted, value in values.items()]  # fmt: skip
    backup = f"; previous version in {path.name}.bak" if existed else ""
    done = "\n".join(shown) + f"  ({path}{backup})"
    names = ", ".join(values)
    try:
        outcome = reload_running(config, values, path, *before)
    except ReloadBusy as exc:
        restore_backup(path, existed=existed)
        return ChangeResult(False, f"{names} not changed: {exc}.")
    except FleetElsewhere as exc:
        return ChangeResult(True, f"{done}\n{exc} It applies where {path} is used, at start.")
    if outcome is None:
        return ChangeResult(
            True,
            f"{done}\n{no_fleet_found(config, *before)}: the change applies when its "
            f"processes start. {POINT_AT_FLEET}",
        )
    if not outcome.applied or (outcome.failed and not outcome.committed):
        restore_backup(path, existed=existed)  # no process took it: nor does the file
        restored = f"{path} restored from {path.name}.bak" if existed else f"{path} removed"
        return ChangeResult(False, f"{names} not changed. {outcome.describe()}\n{restored}.")
    return ChangeResult(not outcome.failed, f"{done}\n{outcome.describe()}")


def _left_out(data: dict[str, Any], dotted: str, value: Any) -> str:
    """A note naming the fields a section written whole drops from the file (they return to
    their defaults), so that replacing a section is never a silent loss."""
    node: Any = data
    for part in split_path(dotted):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not isinstance(value, dict):
        return ""
    dropped = sorted(set(node) - set(value))
    return f"  (dropped from the file: {', '.join(dropped)})" if dropped else ""


def _already_invalid(path: Path, data: dict[str, Any]) -> str:
    """A note for a change refused because the file's ``data`` was invalid before it (a
    hand edit, a setting an upgrade checks more strictly): each ``config set`` must leave a
    valid file, so such problems are fixed in the file itself."""
    if _problems(data) is None:
        return ""
    return (
        f"\n{path.name} was already invalid before this change: edit the file to fix the "
        "problems above (`clawctl config check` lists them all), then set again."
    )


def reload_config(path: Path) -> ChangeResult:
    """Make every running process, on every host, take the config file at ``path`` (checked
    here first) and write it into its own file where that differs, as ``set`` does with
    one value: a hand edit on one host reaches the fleet, never leaving hosts on files that
    differ. A host that cannot take it (its log directory, a read-only file) rejects it
    for all."""
    config = load_config(path)
    try:
        outcome = reload_running(config, None, path, document=read_raw_data(path))
    except ReloadBusy as exc:
        return ChangeResult(False, f"Not reloaded: {exc}.")
    except FleetElsewhere as exc:
        return ChangeResult(False, f"Not reloaded. {exc}")
    if outcome is None:
        return ChangeResult(False, f"{no_fleet_found(config)}: nothing to reload. {POINT_AT_FLEET}")
    if not outcome.applied:
        return ChangeResult(
            False,
            f"{outcome.describe()}\nThe fleet keeps its previous config; {path} was left as "
            "it is: fix it and reload again.",
        )
    return ChangeResult(not outcome.failed, outcome.describe())
