"""Helpers every ``clawctl`` command shares: loading the config and turning errors into messages."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import redis

from claw_worker.config import (
    Config,
    ConfigError,
    apply_env_overrides,
    config_path,
    load_config,
)
from claw_worker.config.jsontext import is_text
from claw_worker.config.store import MASK
from claw_worker.embedded_redis import EmbeddedRedisError

# Errors a command may hit at run time that are the user's or the machine's, not a bug:
# the CLI boundary prints them as one clear message instead of a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    EmbeddedRedisError,
    redis.RedisError,
    OSError,
)


class CliError(click.ClickException):
    """A failure to report as ``Error: <message>`` with exit status 1."""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return f"{exc}\nFix the file (see `clawctl config check`) or set values with `clawctl config set`."
    if isinstance(exc, EmbeddedRedisError):
        return f"{exc}\nSet redis.url to a running Redis with `clawctl config set redis.url redis://HOST:6379/0`."
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {exc}\nCheck that Redis is running and redis.url is right (`clawctl status`)."
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


MAX_SHOWN_CHARS = 300


def internal_error(exc: BaseException) -> str:
    """One line for an error no command expected (a bug): its type and message."""
    message = " ".join(str(exc).split())
    if len(message) > MAX_SHOWN_CHARS:
        message = message[:MAX_SHOWN_CHARS] + "..."
    return (
        f"internal error: {type(exc).__name__}: {message or '(no message)'} "
        "(run with --debug for the traceback)"
    )


def raw_bytes(value: str, limit: int = 40) -> str:
    """The bytes ``value`` was decoded from, for a message (e.g. ``b'\\xff\\xfe'``):
    Python hands over argv and stdin bytes that are not UTF-8 as surrogates U+DC80-U+DCFF."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # another lone surrogate (a JSON "\\ud800" escape)
        raw = value.encode("utf-8", "backslashreplace")
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def argument_problem(args: Sequence[str], *, path_options: Sequence[str] = ()) -> str | None:
    """Why a command-line argument cannot be used (it is not UTF-8), naming it; or None.
    Values of ``path_options`` are exempt: a file name may be any bytes."""
    for index, arg in enumerate(args):
        if is_text(arg):
            continue
        before = args[index - 1] if index else ""
        option, _, value = arg.partition("=") if arg[:2] == "--" and "=" in arg else ("", "", arg)
        if option in path_options or before in path_options:
            continue
        if option:
            name = f"the value of {option}"
        elif before.startswith("-") and "=" not in before:
            name = f"the value of {before}"
        else:
            name = f"argument {index + 1}"
        return f"{name} is not UTF-8 text ({raw_bytes(value)}); pass it as UTF-8"
    return None


def confirm(question: str, *, no_terminal: str) -> None:
    """Ask ``question`` (yes/no) on the terminal; a CliError when there is none to ask on
    (``no_terminal`` says what to pass instead) or the answer is no."""
    if not sys.stdin.isatty():
        raise CliError(f"{no_terminal} (stdin is not a terminal, so nothing can be asked); "
                       "nothing was changed")  # fmt: skip
    try:
        yes = click.confirm(question, default=False)
    except click.Abort:  # Ctrl-C or end of input: the line was not ended
        click.echo(err=True)
        yes = False
    if not yes:
        raise CliError("not confirmed; nothing was changed")


def unusable_home(home: Path, why: str) -> str:
    """What ``onboard`` and ``gateway run`` say when CLAW_HOME cannot be made or written."""
    return (
        f"cannot create CLAW_HOME {home} ({why}): set CLAW_HOME to a directory you can write "
        "(it holds config.json, the workspace, logs and the embedded Redis's files)"
    )


def current_path() -> Path:
    """The config file in use: --config / $CLAW_CONFIG / $CLAW_HOME/config.json."""
    return config_path()


def load(*, environment: bool = True) -> Config:
    """The config this command runs with (the file, then the environment overrides such as
    ``CLAW_REDIS_URL``; ``environment=False``: the file alone, as ``config get`` shows it),
    or a clean error exit naming the file and what is wrong in it."""
    path = current_path()
    try:
        config = load_config(path)
        return apply_env_overrides(config) if environment else config
    except ConfigError as exc:
        raise CliError(describe_error(exc)) from None


def mask_url(url: str) -> str:
    """``url`` with any password replaced, for display."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":" + MASK
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))
