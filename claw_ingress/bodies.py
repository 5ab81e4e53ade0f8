"""Request bodies of the HTTP API (pydantic), and reading a body with a size cap."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

M = TypeVar("M", bound=BaseModel)


class BodyError(Exception):
    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.payload = payload


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=200_000)
    session: str = Field("api:default", min_length=1, max_length=256, pattern=r"^[^\s{}]+$")
    sender_id: str = Field("", max_length=256)
    wait: bool = False
    timeout: float = Field(120.0, gt=0, le=3600)


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
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BodyError(422, {"error": f"body is not valid JSON: {exc}"}) from None


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
