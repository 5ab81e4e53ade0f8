"""``GET /openapi.json``: the ingress's HTTP API as an OpenAPI 3.1 document.

Built from the same pydantic models the routes validate with (``model_json_schema()``), so
the document cannot drift from what the handlers accept; the responses are written out here.
It lists every HTTP route of ``app.py`` (and the channel webhooks, which answer 404 while
their channel is not enabled). The WebSocket endpoints (``/ws``, ``/nodes/connect``) are not
HTTP operations and OpenAPI cannot describe them. The campaign
(``tests/test_schemathesis.py``) fuzzes the running ingress from this document. Served
behind ``gateway.token`` like ``/api/``: it is a map of the API.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from claw_ingress.bodies import MessageBody
from claw_ingress.nodes import HeartbeatBody, RegisterBody
from claw_ingress.openai_request import ChatCompletionRequest

# The channels that push to /webhooks/<channel> (claw_ingress/channels/*: routes()).
WEBHOOK_CHANNELS = ["dingtalk", "feishu", "qq", "telegram", "whatsapp"]
REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        # A sentence naming what is wrong (the /api/ shape), or OpenAI's error object (/v1/).
        "error": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string"}, "type": {"type": "string"}},
                },
            ]
        },
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_ACCEPTED = {
    "type": "object",
    "required": ["session_key", "status"],
    "properties": {
        "message_id": {"type": ["string", "null"]},  # null: a slash command, answered at once
        "session_key": {"type": "string"},
        "run_id": {"type": ["string", "null"]},
        "status": {"type": "string"},
        "reply": {"type": "string"},
        "error": {"type": "string"},
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": {"type": "object"},
    },
}
_MODELS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object"],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"}},
            },
        },
    },
}
_NODE = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": REF.format(model=model.__name__)}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def _operation(summary: str, responses: dict[str, Any], *, secured: bool = True,
               body: type[BaseModel] | None = None,
               parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """One operation; every one may answer a 4xx error (a guard, the token, a bad input)."""
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**responses, "4XX": _json("refused: the error says why", _ERROR)},
    }
    if not secured:
        operation["security"] = []
    if body is not None:
        operation["requestBody"] = _body(body)
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}  # fmt: skip


OWN_SESSION_PARAM = _path_param(
    "session", "a session of the gateway's own clients (api:, ws:, openai:)",
    minLength=1, maxLength=256, pattern=r"^(api|ws|openai):[^\s{}]+$",
)  # fmt: skip


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (MessageBody, ChatCompletionRequest, RegisterBody, HeartbeatBody):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once: it depends on code, not on the config)."""
    try:
        version = metadata.version("clawfleet")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "0.0.0"
    channel = _path_param("channel", "a channel that receives webhooks", enum=WEBHOOK_CHANNELS)
    webhook = {"description": "the platform's answer", "content": {"application/json": {}}}
    paths: dict[str, Any] = {
        "/health": {
            "get": _operation(
                "liveness",
                {
                    "200": _json(
                        "alive", {"type": "object", "properties": {"status": {"const": "ok"}}}
                    )
                },
                secured=False,
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus' text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": _operation("this document", {"200": _json("OpenAPI 3.1", {"type": "object"})})
        },
        "/api/message": {
            "post": _operation(
                "send a message to a session",
                {
                    "200": _json("answered: a command, or the reply when wait is true", _ACCEPTED),
                    "202": _json("queued", _ACCEPTED),
                    "504": _json(
                        "no reply within timeout; the message is still processed", _ACCEPTED
                    ),
                },
                body=MessageBody,
            )
        },
        "/api/messages/{message_id}": {
            "get": _operation(
                "a message's record",
                {"200": _json("the record", {"type": "object"})},
                parameters=[_path_param("message_id", "from POST /api/message", minLength=1)],
            )
        },
        "/api/sessions/{session}/stop": {
            "post": _operation(
                "stop a session's run",
                {"200": _json("stop requested", {"type": "object", "required": ["session_key"]})},
                parameters=[OWN_SESSION_PARAM],
            )
        },
        "/v1/chat/completions": {
            "post": _operation(
                "OpenAI-compatible chat",
                {
                    "200": {
                        "description": "the completion, or server-sent chunks when stream is true",
                        "content": {
                            "application/json": {"schema": _COMPLETION},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    "504": _json(
                        "no reply within X-Claw-Timeout; the message is still processed", _ERROR
                    ),
                },
                body=ChatCompletionRequest,
            )
        },
        "/v1/models": {
            "get": _operation("OpenAI-compatible model list", {"200": _json("the models", _MODELS)})
        },
        "/v1/models/{model}": {
            "get": _operation(
                "one OpenAI-compatible model (404 when not listed)",
                {"200": _json("the model", _MODELS["properties"]["data"]["items"])},
                parameters=[_path_param("model", "a model id from GET /v1/models", minLength=1)],
            )
        },
        "/nodes/register": {
            "post": _operation(
                "register a node (claw-node)",
                {"200": _json("registered", _NODE)},
                body=RegisterBody,
            )
        },
        "/nodes/heartbeat": {
            "post": _operation(
                "renew a node's registration", {"200": _json("renewed", _NODE)}, body=HeartbeatBody
            )
        },
        # Signed by the platform (each channel checks its own signature), not the token.
        "/webhooks/{channel}": {
            "post": _operation(
                "a platform's event", {"200": webhook}, secured=False, parameters=[channel]
            ),
            "get": _operation(
                "a platform's verification (WhatsApp)",
                {"200": webhook},
                secured=False,
                parameters=[channel],
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "clawfleet ingress", "version": version},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "gateway.token, when one is set",
                }
            },
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(document())
