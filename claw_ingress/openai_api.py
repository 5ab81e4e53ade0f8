"""The OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models[/{model}]``.

OpenAI clients (the ``openai`` SDK, chat UIs) talk to the agent as if it were a model. The
session lives in clawfleet: a request sends only its last user message to the agent (earlier
messages in ``messages`` are not replayed; the session's history already holds them; what
is read of the body, and refused, is ``openai_request.py``), in the session named by the
``X-Claw-Session`` header (a key beginning with ``openai:``: another channel's session is
not this caller's to use), else by ``user`` (``openai:<user>``), else a new session of its
own. The requested model name is echoed; the agent answers with the
fleet's configured models.

The reply is waited for like ``/api/message``'s ``wait`` (``replies.py``). ``stream: true`` answers
server-sent ``chat.completion.chunk`` events (the role, the content, ``finish_reason``,
``[DONE]``) with keep-alive comments while the agent works. The wait is ``REPLY_TIMEOUT_SEC``
or the ``X-Claw-Timeout`` header. Errors are OpenAI's JSON; the ones after which a retry
would send the message twice say ``x-should-retry: false`` (the SDK obeys it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from claw_ingress.openai_request import (
    CHANNEL,
    OpenAIError,
    read_request,
    session_of,
    timeout_of,
    user_turn,
)
from claw_ingress.ratelimit import too_many_response
from claw_ingress.replies import Reply, wait_for_reply
from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus
from claw_worker.session.runs import read_run

log = structlog.get_logger(__name__)

ALIAS = "clawfleet"  # a model name that always means "the agent, whatever it runs on"
KEEPALIVE_SEC = 10.0
CHUNK_CHARS = 2000  # content per streamed chunk
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy buffering


# -- the routes --------------------------------------------------------------------------


def configured_models(config: Config) -> list[str]:
    named = [config.agents.defaults.model, *config.providers.proxy.models]
    return [m for m in dict.fromkeys(named) if m]


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": ALIAS}


async def list_models(request: Request) -> JSONResponse:
    models = [ALIAS, *configured_models(request.app.state.live.config)]
    return JSONResponse({"object": "list", "data": [model_object(m) for m in models]})


async def get_model(request: Request) -> JSONResponse:
    """``GET /v1/models/{model}`` (the SDK's ``models.retrieve``, which clients call to check
    a configured name): one of the listed models, else OpenAI's 404 ``model_not_found``."""
    name = request.path_params["model"]
    if name not in (ALIAS, *configured_models(request.app.state.live.config)):
        return OpenAIError(404, f"The model {name!r} does not exist; GET /v1/models lists them",
                           param="model", code="model_not_found").response()  # fmt: skip
    return JSONResponse(model_object(name))


async def chat_completions(request: Request) -> Any:
    state = request.app.state
    config: Config = state.live.config
    try:
        body = await read_request(request, config)
        (text, media), session = user_turn(body), session_of(request, body)
        timeout = timeout_of(request)
    except OpenAIError as exc:
        return exc.response()
    model = body.model or next(iter(configured_models(config)), ALIAS)
    message = InboundMessage(channel=CHANNEL, chat_id=session, session_key=session, text=text,
                             media=media)  # fmt: skip
    waiter = state.outbound.expect(message.message_id)
    try:
        accepted = await state.inbox.accept(message)
    except RedisError as exc:
        state.outbound.forget(message.message_id, waiter)
        log.warning("redis unavailable", error=str(exc))
        return OpenAIError(503, "message store unavailable, retry later",
                           code="unavailable").response()  # fmt: skip
    if accepted.status == "limited":  # OpenAI's own shape under /v1 (errors.py)
        state.outbound.forget(message.message_id, waiter)
        return too_many_response(request.url.path, accepted.retry_after_sec,
                                 "messages from this sender")  # fmt: skip
    if accepted.status == "too_large":  # quotas.max_message_chars
        state.outbound.forget(message.message_id, waiter)
        return OpenAIError(413, accepted.reply, param="messages",
                           code="message_too_long", retry=False).response()  # fmt: skip
    answer = Answer(f"chatcmpl-{message.message_id}", model, int(time.time()))
    if accepted.status == "command":
        state.outbound.forget(message.message_id, waiter)
        ready: Reply | None = Reply("done", accepted.reply)
    else:
        ready = None
    # The message itself is logged by the inbox ("message received", "command answered"); a
    # debug line here cost ~5 µs a request even when filtered out.

    async def wait(disconnected: Callable[[], Awaitable[bool]] | None) -> Reply:
        if ready is not None:
            return ready
        return await wait_for_reply(state, message.message_id, waiter, timeout,
                                    session_key=session, disconnected=disconnected)  # fmt: skip

    async def usage() -> dict[str, int]:
        run: dict[str, str] = {}
        if accepted.run_id:  # a command has no run: it used no tokens
            with contextlib.suppress(RedisError):
                run = await read_run(state.redis, accepted.run_id) or {}
        return run_usage(run)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = answer.stream(lambda: wait(None), usage if include_usage else None,
                               message.message_id, timeout)  # fmt: skip
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers=STREAM_HEADERS)  # fmt: skip
    reply = await wait(request.is_disconnected)
    if reply.status == "disconnected":
        log.info("client disconnected", path=request.url.path, message_id=message.message_id,
                 during="wait for reply")  # fmt: skip
        return OpenAIError(499, "client disconnected").response()  # (nobody reads it)
    problem = failure(reply, message.message_id, timeout)
    if problem is not None:
        return problem.response()
    return JSONResponse(answer.completion(reply.text, await usage()))


def run_usage(run: dict[str, str]) -> dict[str, int]:
    """OpenAI's usage from a run's record: the tokens of all its LLM calls (a provider that
    reports only a total: the total alone)."""

    def count(name: str) -> int:
        value = run.get(name) or "0"
        return int(value) if value.isdigit() else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": count("total_tokens") or prompt + completion}  # fmt: skip


def failure(reply: Reply, message_id: str, timeout: float) -> OpenAIError | None:
    if reply.status == "timeout":
        return OpenAIError(
            504,
            f"no reply within {timeout:g}s; message {message_id} is still being processed: "
            f"GET /api/messages/{message_id}",
            kind="timeout", code="timeout", retry=False,
        )  # fmt: skip
    if reply.status == MessageStatus.FAILED.value:
        return OpenAIError(502, reply.text or "the agent failed",
                           code="agent_failed", retry=False)  # fmt: skip
    return None


@dataclass(frozen=True)
class Answer:
    """The response objects of one completion."""

    id: str
    model: str
    created: int

    def completion(self, text: str, usage: dict[str, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": usage,
        }  # fmt: skip

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        data = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }  # fmt: skip
        return sse(data)

    async def stream(
        self,
        reply: Callable[[], Awaitable[Reply]],
        usage: Callable[[], Awaitable[dict[str, int]]] | None,
        message_id: str,
        timeout: float,
    ) -> AsyncIterator[str]:
        task = asyncio.ensure_future(reply())
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            while not (await asyncio.wait({task}, timeout=KEEPALIVE_SEC))[0]:
                yield ": keep-alive\n\n"
            done = task.result()
            problem = failure(done, message_id, timeout)
            if problem is not None:
                yield sse(problem.payload())
                return
            for start in range(0, len(done.text), CHUNK_CHARS):
                yield self.chunk({"content": done.text[start : start + CHUNK_CHARS]})
            yield self.chunk({}, finish="stop")
            if usage is not None:
                yield sse({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model, "choices": [],
                           "usage": await usage()})  # fmt: skip
            yield "data: [DONE]\n\n"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
