"""The body of a refusal, in the shape the clients of its route read.

Under ``/v1`` the clients are OpenAI's (the SDKs, chat UIs, LangChain, the Vercel AI SDK):
they read ``error.message``, ``error.type`` and ``error.code`` from OpenAI's error object,
and some validate it, so a plain string there loses the reason ("Invalid JSON response").
Every other route answers the gateway's own ``{"error": "<message>", ...}``. The middleware
(Host, Origin, content type, body limits, token, rate limit) and the router's 404/405
answer before any route runs, for every route alike: they ask here which shape to send.
"""

from __future__ import annotations

from typing import Any

OPENAI_ROOT = "/v1"


def is_openai_path(path: str) -> bool:
    return path == OPENAI_ROOT or path.startswith(f"{OPENAI_ROOT}/")


def openai_error(
    message: str, status: int, *, kind: str | None = None, param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """OpenAI's error object (what goes under ``"error"``); ``kind`` (its ``type``) by the
    status unless given, as OpenAI's API names them."""
    if kind is None:
        kind = (
            "rate_limit_error" if status == 429
            else "server_error" if status >= 500
            else "invalid_request_error"
        )  # fmt: skip
    return {"message": message, "type": kind, "param": param, "code": code}


def error_payload(
    path: str, status: int, message: str, *, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON body refusing a request for ``path``: OpenAI's error under ``/v1`` (``code``
    goes in it; ``extra`` fields, which OpenAI's object has no place for, are left out: a
    header says them, as ``Retry-After``), else ``{"error": message, **extra}``."""
    if is_openai_path(path):
        return {"error": openai_error(message, status, code=code)}
    return {"error": message, **extra}
