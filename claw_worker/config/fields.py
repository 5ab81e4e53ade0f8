"""Field helpers shared by the config models: the sections' base, the secret marker, and the
checks of URLs and of names (ids, models).

A field made with :func:`secret` holds a credential. Masking (``config get``, ``/config
get``, the answer of ``config set``) and log redaction find secrets by this marker in the
schema and by their configured values, never by guessing from a field's name.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SECRET_MARK = "secret"


# Longest text of any string field unless the field says otherwise: room for a path
# (PATH_MAX), a URL, a token or a pattern, but not for a pasted file by mistake.
MAX_TEXT_CHARS = 4096
MAX_NAME_CHARS = 256  # a model name, an id, a sender
MAX_PROSE_CHARS = 16_000  # texts the agent writes or is prompted with
# Longest period of anything time drives (an interval, a quiet time, a TTL). Past it a
# value is a typo, and not a harmless one: beat cannot schedule an interval that ends
# after the year 9999 (OverflowError at start, no cron, sweeper or heartbeat), and Redis
# refuses a TTL past 2**63 ms ("invalid expire time": every enqueue or alert fails).
MAX_PERIOD_SEC = 366 * 86400
# Longest wait on one network request (an LLM answer, a download). Python refuses a socket
# timeout past about 3e9 s (OverflowError at every call), and an hour is already far past
# any answer worth waiting for.
MAX_REQUEST_SEC = 3600

# The model config of every section: unknown keys refused, types strict, frozen once
# loaded, strings at most MAX_TEXT_CHARS.
SECTION_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, str_max_length=MAX_TEXT_CHARS)


class Section(BaseModel):
    """A config section: unknown keys refused, types strict, frozen once loaded."""

    model_config = SECTION_CONFIG


def secret(description: str = "") -> Any:
    """A string field holding a credential (default empty)."""
    return Field("", description=description or None, json_schema_extra={SECRET_MARK: True})


def check_url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``value`` when empty or an absolute URL of one of ``schemes`` with a host; else a
    ValueError saying what is wrong. A URL that starts right but has no host (``http://``),
    spaces or a bad port would otherwise fail only when first used. The message never
    repeats the value: it may carry a password."""
    if not value:
        return value
    example = f"{schemes[-1]}://host:port/path"
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {' or '.join(f'{s}://' for s in schemes)}")
    if not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"must be a URL with a host and no spaces, like {example}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"has a bad port: give a number from 1 to 65535, like {example}") from None
    return value


def check_name(value: str) -> str:
    """``value`` when empty (unset) or a name without spaces around it: " 12" would never
    match the sender 12, nor " gpt-4o" a model."""
    if value != value.strip():
        raise ValueError(f"{value!r} has spaces around it: write {value.strip()!r}")
    return value


def check_names(values: list[str]) -> list[str]:
    """Each of ``values`` a name (:func:`check_name`), none empty: an empty entry matches
    nothing and is most likely a slip."""
    for value in values:
        if not value.strip():
            raise ValueError("an entry is empty: remove it")
        check_name(value)
    return values


# Field types of names: ``model: Name = ""``, ``allow_from: Names = []``.
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(check_name)]
Names = Annotated[list[Name], AfterValidator(check_names)]
