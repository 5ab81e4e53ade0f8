"""Field helpers shared by the config models: the sections' base and the secret marker.

A field made with :func:`secret` holds a credential. Masking (``config get``, ``/config
get``, the answer of ``config set``) and log redaction find secrets by this marker in the
schema and by their configured values, never by guessing from a field's name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SECRET_MARK = "secret"


class Section(BaseModel):
    """A config section: unknown keys refused, types strict, frozen once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def secret(description: str = "") -> Any:
    """A string field holding a credential (default empty)."""
    return Field("", description=description or None, json_schema_extra={SECRET_MARK: True})
