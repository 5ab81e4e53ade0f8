"""What ``POST /v1/chat/completions`` reads of OpenAI's request body, and its refusals.

The agent keeps the conversation (``openai_api.py``), so a request brings one new user turn:
its last message must be the user's (system and developer messages after it aside). A
request that ends with the assistant's or a tool's message (a client running its own tool
loop, or asking to continue an answer) is refused: taking the last user message instead
would send it to the agent a second time as a new turn.

Of the user's content parts, the text parts are the message; images, audio and files
become media references, as a chat channel's attachments do: an ``http(s)`` image URL as
is (the agent can fetch it), inline data by its type and size (it is not kept). A message
of attachments alone is taken, with a placeholder text naming what came.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import JSONResponse

from claw_ingress.bodies import BodyError, parse_body, read_json
from claw_ingress.errors import openai_error
from claw_ingress.guards import body_limit
from claw_worker.config import Config
from claw_worker.contract import session_name_error

CHANNEL = "openai"
REPLY_TIMEOUT_SEC = 300.0  # below the openai SDK's 600 s, so the client hears why
MAX_TIMEOUT_SEC = 3600.0
MAX_TEXT = 200_000
MAX_MEDIA = 20  # references kept of one message's attachments
MAX_URL_CHARS = 2000
USER_RE = re.compile(r"[^\s{}]{1,200}")
NO_RETRY = {"x-should-retry": "false"}
# Roles that may follow the user's message: instructions, not a turn of the conversation.
INSTRUCTION_ROLES = frozenset({"system", "developer"})
PLACEHOLDER = {"image": "[image]", "audio": "[voice message]", "file": "[file]"}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    # Any shape: a client's odd attachment is described or skipped, never a 400.
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """What the agent reads of OpenAI's body; the rest (temperature, tools, ...) is allowed
    and ignored: the fleet's config decides those."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field("", max_length=256)
    # minItems in the schema; the check is the validator's, to say it in words.
    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})
    # null as OpenAI's schema allows for stream, n and stream_options (its default: clients
    # that build the body from optional fields send it).
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=4096)
    n: int | None = Field(1, json_schema_extra={"maximum": 1})  # the agent gives one answer

    @field_validator("messages")
    @classmethod
    def _some_messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise PydanticCustomError("too_short", "must hold at least one message")
        return messages


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,  # OpenAI's type for the status (errors.openai_error)
        param: str | None = None,
        code: str | None = None,
        retry: bool = True,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code, self.retry = status, kind, param, code, retry

    def payload(self) -> dict[str, Any]:
        return {"error": openai_error(str(self), self.status, kind=self.kind, param=self.param,
                                      code=self.code)}  # fmt: skip

    def response(self) -> JSONResponse:
        headers = {} if self.retry else NO_RETRY
        return JSONResponse(self.payload(), status_code=self.status, headers=headers)


def user_turn(body: ChatCompletionRequest) -> tuple[str, list[str]]:
    """The new user message: its text (its text parts, joined) and media references; refuses
    what the agent cannot take (more than one choice, a request not ending with the user)."""
    if body.n not in (None, 1):
        raise OpenAIError(400, f"n: the agent gives one answer per request, not {body.n}; "
                          "leave n out or set it to 1", param="n")  # fmt: skip
    turns = [m for m in body.messages if m.role not in INSTRUCTION_ROLES]
    if not any(m.role == "user" for m in turns):
        raise OpenAIError(400, "messages needs a message with role 'user'", param="messages")
    last = turns[-1]
    if last.role != "user":
        raise OpenAIError(
            400,
            f"the last message is the {last.role!r} role's, not the user's: the agent keeps "
            "the conversation and answers one new user message per request, so end messages "
            "with it (a client's own tool loop or continuing an answer is not supported)",
            param="messages",
        )
    if isinstance(last.content, str):
        text, media = last.content, []
    else:
        parts = last.content or []
        text = "\n".join(p.text or "" for p in parts if p.type == "text")
        media = [ref for p in parts if (ref := media_reference(p)) is not None][:MAX_MEDIA]
    if len(text) > MAX_TEXT:
        raise OpenAIError(400, f"the last user message is longer than {MAX_TEXT} characters",
                          param="messages")  # fmt: skip
    if not text.strip():
        if not media:
            raise OpenAIError(400, "the last user message has no text", param="messages")
        text = PLACEHOLDER[media[0].partition(":")[0]]
    return text, media


def media_reference(part: ContentPart) -> str | None:
    """``image:<url>``, or what inline data was (``image: inline image/png, 1,200,000
    bytes``); None for a part that is no attachment."""
    if part.type == "image_url":
        given = part.image_url
        url = given.get("url") if isinstance(given, dict) else given
        if not isinstance(url, str) or not url:
            return None
        if url.startswith("data:"):
            head, _, data = url.partition(",")
            kind = head.removeprefix("data:").partition(";")[0] or "image"
            return _inline("image", kind, data)
        return f"image:{url[:MAX_URL_CHARS]}"
    if part.type == "input_audio" and isinstance(part.input_audio, dict):
        audio = part.input_audio
        return _inline("audio", f"audio/{audio.get('format') or '?'}", audio.get("data"))
    if part.type == "file" and isinstance(part.file, dict):
        name = part.file.get("filename") or part.file.get("file_id") or "unnamed"
        return f"file:{str(name)[:200]}"
    return None


def _inline(kind: str, media_type: str, data: object) -> str:
    size = len(data) * 3 // 4 if isinstance(data, str) else 0  # base64: 4 chars, 3 bytes
    return f"{kind}: inline {media_type[:100]}, {size:,} bytes (not kept)"


def session_of(request: Request, body: ChatCompletionRequest) -> str:
    named = request.headers.get("x-claw-session")
    if named is not None:
        error = session_name_error(named, namespace=CHANNEL)
        if error is not None:
            raise OpenAIError(400, f"X-Claw-Session: {error}", param="X-Claw-Session")
        return named
    if body.user:
        if USER_RE.fullmatch(body.user):
            return f"{CHANNEL}:{body.user}"
        return f"{CHANNEL}:~{hashlib.sha256(body.user.encode()).hexdigest()[:32]}"
    return f"{CHANNEL}:{uuid.uuid4().hex}"


def timeout_of(request: Request) -> float:
    given = request.headers.get("x-claw-timeout")
    if given is None:
        return REPLY_TIMEOUT_SEC
    try:
        timeout = float(given)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= MAX_TIMEOUT_SEC:
        raise OpenAIError(400, f"X-Claw-Timeout must be seconds in (0, {MAX_TIMEOUT_SEC:g}]",
                          param="X-Claw-Timeout")  # fmt: skip
    return timeout


async def read_request(request: Request, config: Config) -> ChatCompletionRequest:
    try:
        data = await read_json(request, body_limit(request.url.path, config.gateway)[0])
        return parse_body(ChatCompletionRequest, data)
    except BodyError as exc:
        status = 413 if exc.status == 413 else 400
        detail = exc.payload.get("detail") or []
        # The SDK shows only the message: it says what is wrong with each field.
        said = "; ".join(f"{d['field']}: {d['message']}" for d in detail) or exc.payload["error"]
        param = detail[0]["field"] if detail else None
        raise OpenAIError(status, said, param=param) from None
