"""Request bodies of the HTTP API (pydantic), and reading a body with bounds.

A body is refused (413/422) before it can cost more than it is worth: larger than
``max_body_bytes``, not UTF-8, nested deeper than :data:`MAX_DEPTH` (``json`` recurses once
per level: ``[`` x 100,000 raised RecursionError), or holding a number with more than
:data:`MAX_NUMBER_DIGITS` digits (an int of 5,000 digits raised ValueError in ``int()``),
``NaN`` or ``Infinity``. The deadline for the body is the guard's (``guards.py``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from claw_worker.commands import API_CHANNEL
from claw_worker.contract import SESSION_NAME_MAX, session_name_error, session_name_pattern

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 30

# A JSON string, closed or running to the end (so a scan never restarts inside one: linear).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


class BodyError(Exception):
    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.payload = payload


def _invalid(error: str) -> BodyError:
    return BodyError(422, {"error": error})


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=200_000)
    session: str = Field(f"{API_CHANNEL}:default", max_length=SESSION_NAME_MAX,
                         pattern=session_name_pattern(API_CHANNEL))  # fmt: skip
    sender_id: str = Field("", max_length=256)
    wait: bool = False
    timeout: float = Field(120.0, gt=0, le=3600)

    _session = field_validator("session", mode="before")(
        lambda value: in_namespace(value, API_CHANNEL)
    )


def in_namespace(value: Any, namespace: str) -> Any:
    """A session field's check, before pydantic's own (whose message would only quote the
    pattern): the caller's own namespace only (``contract.session_name_error``)."""
    error = session_name_error(value, namespace=namespace) if isinstance(value, str) else None
    if error is not None:
        raise ValueError(error)
    return value


def nesting_depth(raw: bytes) -> int:
    """How deeply ``raw``'s arrays and objects nest, brackets inside strings not counted
    (exact for valid JSON; the parser refuses the rest anyway). C-speed: no loop per byte."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _digits(literal: str) -> int:
    return sum(c.isdigit() for c in literal)


def _parse_int(literal: str) -> int:
    if _digits(literal) > MAX_NUMBER_DIGITS:
        raise _too_long(literal)
    return int(literal)


def _parse_float(literal: str) -> float:
    if _digits(literal) > MAX_NUMBER_DIGITS:
        raise _too_long(literal)
    value = float(literal)
    if not math.isfinite(value):
        raise _invalid(f"the number {literal} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise _invalid(f"{name} is not a number JSON allows")


def _too_long(literal: str) -> BodyError:
    return _invalid(
        f"a number in the body has {_digits(literal)} digits ({literal[:12]}...); "
        f"at most {MAX_NUMBER_DIGITS} are accepted"
    )


# Built once: json.loads with hooks builds a decoder (and its scanner) on every call.
_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def loads_bounded(raw: bytes) -> Any:
    """``raw`` parsed as JSON within the bounds above; BodyError(422) naming the one broken."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"body is not UTF-8 JSON: {exc}") from None
    # Fewer opening brackets than the limit cannot nest deeper (most bodies: no scan).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and nesting_depth(raw) > MAX_DEPTH:
        raise _invalid(f"body is nested more than {MAX_DEPTH} levels deep")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _invalid(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # not reached below MAX_DEPTH; kept as the last line of defence
        raise _invalid(f"body is nested more than {MAX_DEPTH} levels deep") from None


async def read_json(request: Request, max_bytes: int) -> Any:
    """The JSON body, refusing more than ``max_bytes`` (413) and bad JSON (422)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, {"error": f"request body is larger than {max_bytes} bytes"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyError(413, {"error": f"request body is larger than {max_bytes} bytes"})
        chunks.append(chunk)
    return loads_bounded(b"".join(chunks))


def parse_body(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
            for err in exc.errors()
        ]
        names = ", ".join(d["field"] for d in detail)
        raise BodyError(422, {"error": f"invalid field(s): {names}", "detail": detail}) from None
