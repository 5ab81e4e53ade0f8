"""Reading, validating and atomically writing the JSON config file, and dotted paths into it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from claw_worker.config import jsontext
from claw_worker.config.fields import SECRET_MARK
from claw_worker.config.schema import Config
from claw_worker.fsutil import atomic_write_bytes

MASK = "****"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # far above any real config; stops /dev/zero & co.


class ConfigError(Exception):
    """A config file or value that cannot be used; the message says where and why."""


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        path = ".".join(p for p in (prefix, path) if p) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (remove it or check the spelling)"
        lines.append(f"{path}: {msg}")
    return "\n".join(lines)


def parse_config_text(text: str, source: str = "config") -> Config:
    return validate_config_data(parse_json(text, source), source)


def parse_json(text: str, source: str = "config") -> Any:
    """The JSON value in ``text`` (config JSON: see ``jsontext.loads``), or a ConfigError
    naming ``source`` and where in it the problem is."""
    try:
        return jsontext.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (extra content after the JSON object)" if exc.msg == "Extra data" else ""
        raise ConfigError(
            f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}"
        ) from None
    except jsontext.JsonTextError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def validate_config_data(data: Any, source: str = "config") -> Config:
    """``data`` as a Config; every string is checked to be text (no lone surrogates) and
    every number finite, so a valid config can always be written out and shown."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object")
    problems = jsontext.problems(data)
    if problems:
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(problems))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config\n{format_validation_error(exc)}") from None


def read_config_text(path: Path) -> str | None:
    """The text of the config file at ``path`` (None when there is none), or a ConfigError
    that names the file and says what is wrong with it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {_read_problem(path, exc)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB: not a config"
        )
    try:
        return jsontext.decode(raw)
    except jsontext.JsonTextError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOTDIR:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a directory"
    return exc.strerror or str(exc)


def load_config(path: Path) -> Config:
    """The config in ``path``; a missing file means all defaults."""
    text = read_config_text(path)
    return Config() if text is None else parse_config_text(text, str(path))


def load_config_data(path: Path) -> dict[str, Any]:
    """The raw JSON object in ``path`` (validated), so edits keep only what the user wrote."""
    data = read_raw_data(path)
    validate_config_data(data, str(path))
    return data


def read_raw_data(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` as written ({} when missing), not checked against the
    schema: an edit may be exactly how the user fixes it, and the result is validated whole
    before anything is written."""
    text = read_config_text(path)
    if text is None:
        return {}
    data = parse_json(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    # What cannot even be copied (too deep, numbers too long) stops here; a bad string is
    # left for the validation of the edited result, so `config set` can replace it.
    problems = jsontext.problems(data, values=False)
    if problems:
        raise ConfigError(f"{path}: invalid config\n" + "\n".join(problems))
    return data


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def save_config_data(path: Path, data: dict[str, Any]) -> Config:
    """Validate ``data`` and write it atomically, keeping the previous file as ``.bak``.

    A file that cannot be written (a read-only mount, as compose makes it) is a
    :class:`ConfigError` that says so, and nothing is changed.
    """
    config = validate_config_data(data, str(path))
    if path.exists() and os.statvfs(path).f_flag & os.ST_RDONLY:
        raise ConfigError(read_only_message(path, OSError(errno.EROFS, "read-only")))
    try:
        if path.exists():
            shutil.copy2(path, backup_path(path))
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ConfigError(read_only_message(path, exc)) from None
    return config


def read_only_message(path: Path, exc: OSError) -> str:
    why = "it is on a read-only file system" if exc.errno == errno.EROFS else exc.strerror
    return (
        f"{path} cannot be written ({why}). Change the file where it is kept (for compose, "
        f"./config.json on the Docker host), then run `clawctl config reload` or /reload."
    )


def restore_backup(path: Path, *, existed: bool) -> None:
    """Put back the file that :func:`save_config_data` replaced (or remove a new one)."""
    if existed:
        atomic_write_bytes(path, backup_path(path).read_bytes(), 0o600)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` among the processes of one host."""
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _normalise_part(part: str) -> str:
    return "enabled" if part == "enable" else part


def split_path(dotted: str) -> list[str]:
    parts = [_normalise_part(p) for p in dotted.strip().split(".")]
    if not dotted.strip() or any(not p for p in parts):
        raise ConfigError(f"'{dotted}' is not a dotted config path (e.g. gateway.port)")
    return parts


def get_path(config: Config, dotted: str) -> Any:
    """The value at ``dotted`` in the full (defaulted) config."""
    node: Any = config.model_dump(mode="json")
    walked: list[str] = []
    for part in split_path(dotted):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(walked) or "the top level"
            options = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise ConfigError(f"{dotted}: no field '{part}' under {where} (fields: {options})")
        node = node[part]
        walked.append(part)
    return node


def parse_value(raw: str) -> Any:
    """A CLI value: JSON when it parses as JSON, else the plain string."""
    try:
        value = jsontext.loads(raw)
    except json.JSONDecodeError:
        return raw
    except jsontext.JsonTextError as exc:
        raise ConfigError(f"the value {jsontext.shown(raw)} is {exc}") from None
    problems = jsontext.problems(value, values=False, top=f"the value {jsontext.shown(raw)}")
    if problems:
        raise ConfigError("; ".join(problems))
    return value


def set_path(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``dotted`` set to ``value`` (intermediate objects created)."""
    result = json.loads(json.dumps(data))
    node = result
    parts = split_path(dotted)
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    return result


def _field_at(parts: Sequence[str]) -> FieldInfo | None:
    """The schema field at ``parts`` (dict sections take any key), or None."""
    node: Any = Config
    found: FieldInfo | None = None
    for part in parts:
        if isinstance(node, type) and issubclass(node, BaseModel):
            found = node.model_fields.get(part)
            if found is None:
                return None
            node = found.annotation
        elif get_origin(node) is dict:
            node, found = get_args(node)[1], None
        else:
            return None
    return found


def is_secret_path(parts: Sequence[str]) -> bool:
    """The field at ``parts`` is marked secret in the schema (``fields.secret``)."""
    found = _field_at(parts)
    extra = found.json_schema_extra if found is not None else None
    return isinstance(extra, dict) and bool(extra.get(SECRET_MARK))


def mask_secret(value: str) -> str:
    if not value:
        return value
    return value[:3] + MASK if len(value) > 8 else MASK


def mask_url_password(url: str) -> str:
    """``url`` with its password, if any, masked (a Redis URL may carry one)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def mask_secrets(node: Any, dotted: str = "") -> Any:
    """A copy of the config value at ``dotted`` ("" for the whole config) with every value
    of a field marked secret masked, and the password of a URL."""
    return _mask(node, tuple(split_path(dotted)) if dotted else ())


def _mask(node: Any, parts: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {key: _mask(value, (*parts, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [_mask(value, parts) for value in node]
    if isinstance(node, str) and is_secret_path(parts):
        return mask_secret(node)
    if isinstance(node, str) and parts[-1:] == ("url",):
        return mask_url_password(node)
    return node


def secret_values(config: Config) -> list[str]:
    """Every secret the config holds: values of marked fields, the API key the proxy falls
    back to, and the Redis password."""
    found: list[str] = []

    def walk(node: Any, parts: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*parts, key))
        elif isinstance(node, str) and node and is_secret_path(parts):
            found.append(node)

    walk(config.model_dump(mode="json"), ())
    found.append(resolve_api_key(""))  # $CLAW_API_KEY / $OPENAI_API_KEY
    if config.redis.url:
        found.append(urlsplit(config.redis.url).password or "")
    return [value for value in found if value]


def resolve_api_key(configured: str) -> str:
    return configured or os.environ.get("CLAW_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
