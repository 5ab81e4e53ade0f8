"""The ingress ASGI app: the gateway's HTTP API in front of the session mailboxes.

It imports only the allow-listed modules of ``claw_worker`` (the message contract, the
config, the enqueue side of the session package, the command registry, the control
channel; ``tests/test_layout.py`` enforces the list), never the agent runtime, providers,
tools or even Celery: the enqueue script pushes the drain wake-up itself
(``claw_worker/session/wakeup.py``).

The config is a :class:`LiveConfig`: a fleet-wide reload swaps it, and each request reads
it once. In front of the routes: ``guards.py`` (Host, Origin, Content-Type, the body
deadline), then the bearer token; below them, ``connections.py`` (header deadline,
connection cap) in uvicorn's protocol.

Admin commands (``/config``, ``/reload``) run for an API caller only when a gateway.token is
set and ``api:<sender_id>`` is in gateway.admins (``commands.is_admin``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute

from claw_ingress.auth import BearerAuth
from claw_ingress.bodies import BodyError, MessageBody, parse_body, read_json
from claw_ingress.cancel import stop_if_cancelled
from claw_ingress.channels.base import ChannelContext
from claw_ingress.channels.manager import ChannelManager
from claw_ingress.channels.websocket import WS_CHANNEL, ws_endpoint
from claw_ingress.connections import quiet_resource_errors
from claw_ingress.delivery import Delivery
from claw_ingress.errors import error_payload
from claw_ingress.guards import RequestGuard, TrailingSlash
from claw_ingress.inbox import Inbox
from claw_ingress.nodes import node_routes
from claw_ingress.openai_api import chat_completions, get_model, list_models
from claw_ingress.openai_request import CHANNEL as OPENAI_CHANNEL
from claw_ingress.openapi import openapi_json
from claw_ingress.outbound import OutboundReader
from claw_ingress.ratelimit import IpRateLimit, too_many_response
from claw_ingress.replies import wait_for_reply
from claw_ingress.webhooks import WebhookRouter
from claw_worker import metrics
from claw_worker.commands import API_CHANNEL
from claw_worker.config import Config, config_path
from claw_worker.config.reload import LiveConfig, ReloadParticipant
from claw_worker.contract import InboundMessage, MessageStatus, session_name_error
from claw_worker.control import ControlListener
from claw_worker.process import identity
from claw_worker.redis_conn import client as sync_client
from claw_worker.redis_conn import record_url, redis_url
from claw_worker.session.enqueue import AsyncMailbox
from claw_worker.session.stop import request_stop

log = structlog.get_logger(__name__)

RETRY_AFTER_SEC = "2"
# Behind gateway.token when one is set (Prometheus sends it as a bearer token too).
PROTECTED_PREFIXES = ("/api/", "/v1/", "/ws", "/nodes/", "/metrics", "/openapi.json")
# The namespaces of the gateway's own clients (all behind the one gateway.token): each may
# name sessions in its own only, and stop the runs of these (never a chat channel's).
OWN_SESSIONS = tuple(f"{ns}:" for ns in (API_CHANNEL, WS_CHANNEL, OPENAI_CHANNEL))
CHANNELS_EVERY_SEC = 1.0  # the channels' states are copied into the registry record this often


def unavailable(exc: Exception) -> JSONResponse:
    log.warning("redis unavailable", error=str(exc))
    metrics.STORE_UNAVAILABLE.inc()
    return JSONResponse(
        {"error": "message store unavailable, retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SEC},
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 (no route matched; say a path with a newline) as the JSON
    error every other refusal is (OpenAI's under /v1: ``errors.py``), not a text/plain
    page."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    said = f"{exc.detail}: {request.method} {path}"
    return JSONResponse(error_payload(path, exc.status_code, said), status_code=exc.status_code,
                        headers=exc.headers)  # fmt: skip


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def metrics_text(request: Request) -> Response:
    """Prometheus' text format: this process's counters (claw_worker/metrics.py)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def post_message(request: Request) -> JSONResponse:
    state = request.app.state
    config: Config = state.live.config
    try:
        body = parse_body(MessageBody, await read_json(request, config.gateway.max_body_bytes))
    except BodyError as exc:
        return JSONResponse(exc.payload, status_code=exc.status)
    message = InboundMessage(
        channel=API_CHANNEL,
        chat_id=body.session,
        session_key=body.session,
        sender_id=body.sender_id,
        text=body.text,
    )
    waiter = state.outbound.expect(message.message_id) if body.wait else None
    try:
        result = await state.inbox.accept(message)
    except RedisError as exc:
        if waiter is not None:
            state.outbound.forget(message.message_id, waiter)
        return unavailable(exc)
    if result.status in ("command", "limited", "too_large") and waiter is not None:
        state.outbound.forget(message.message_id, waiter)
    if result.status == "too_large":  # quotas.max_message_chars
        return JSONResponse({"error": result.reply, "field": "text"}, status_code=413)
    if result.status == "limited":
        return too_many_response(request.url.path, result.retry_after_sec,
                                 "messages from this sender")  # fmt: skip
    if result.status == "command":  # answered at once: nothing stored, so no message, no run
        return JSONResponse({"message_id": None, "session_key": body.session, "run_id": None,
                             "status": "done", "reply": result.reply})  # fmt: skip
    accepted = {
        "message_id": message.message_id,
        "session_key": message.session_key,
        "run_id": result.run_id,
    }
    if waiter is None:
        return JSONResponse({**accepted, "status": MessageStatus.QUEUED.value}, status_code=202)
    return await _wait_for_reply(request, message.message_id, waiter, body.timeout, accepted)


async def _wait_for_reply(
    request: Request,
    message_id: str,
    waiter: asyncio.Future[Any],
    timeout: float,
    accepted: dict[str, str],
) -> JSONResponse:
    reply = await wait_for_reply(request.app.state, message_id, waiter, timeout,
                                 session_key=accepted["session_key"],
                                 disconnected=request.is_disconnected)  # fmt: skip
    if reply.status == "disconnected":  # nobody to answer: the wait was given up
        log.info("client disconnected", path=request.url.path, message_id=message_id,
                 during="wait for reply")  # fmt: skip
        return JSONResponse({**accepted, "status": "disconnected"}, status_code=499)
    if reply.status != "timeout":
        return JSONResponse({**accepted, "status": reply.status, "reply": reply.text})
    return JSONResponse(
        {
            **accepted,
            "status": "timeout",
            "error": f"no reply within {timeout:g}s; message {message_id} is still being "
            f"processed: GET /api/messages/{message_id}",
        },
        status_code=504,
    )


async def get_message(request: Request) -> JSONResponse:
    """The record of a message the gateway's own clients sent (api:, ws:, openai:). Another
    channel's is unknown here, like a session it may not name: chat message ids are made
    from the platform's (``telegram-<chat>-<n>``), so they are guessed easily, and the
    record holds the agent's reply to that chat."""
    message_id = request.path_params["message_id"]
    try:
        record = await request.app.state.mailbox.get_message(message_id)
    except RedisError as exc:
        return unavailable(exc)
    if record is None or not record["session_key"].startswith(OWN_SESSIONS):
        return JSONResponse({"error": f"unknown message_id {message_id}"}, status_code=404)
    return JSONResponse(record)


async def stop_session(request: Request) -> JSONResponse:
    session_key = request.path_params["session"]
    error = session_name_error(session_key)
    if error is None and not session_key.startswith(OWN_SESSIONS):  # no chat's runs
        error = "only the sessions of the gateway's own clients (api:, ws:, openai:) stop here"
    if error is not None:
        return JSONResponse({"error": error}, status_code=422)
    try:
        await request_stop(request.app.state.redis, session_key)
    except RedisError as exc:
        return unavailable(exc)
    return JSONResponse({"session_key": session_key, "status": "stop_requested"})


def create_app(config: Config, *, url: str | None = None) -> Starlette:
    live = LiveConfig(config)
    url = url or redis_url(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            # redis-py caps a pool at 100 and then fails at once ("Too many connections"):
            # size it for a burst of concurrent requests (connections open lazily).
            max_connections=2048,
            health_check_interval=30,
            socket_connect_timeout=2,
            socket_timeout=10,
            retry_on_timeout=False,
            # A pooled connection Redis closed (a restart, a failover, an idle limit) fails
            # its next command: replaced and sent again. redis-py's asyncio client built
            # from a URL retries nothing by itself; timeouts stay unretried (a command that
            # timed out may have run).
            retry=Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=1.0),
                3,
                supported_errors=(RedisConnectionError,),
            ),
        )
        quiet_resource_errors(asyncio.get_running_loop())
        app.state.redis = client
        runs = config.agents.defaults.runtime_control
        app.state.mailbox = AsyncMailbox(
            client,
            ttl_sec=config.worker.message_ttl_sec,
            run_ttl_sec=runs.run_state_ttl_seconds,
            run_max=runs.run_state_max,
        )
        app.state.outbound = OutboundReader(client)
        app.state.inbox = Inbox(live, client, app.state.mailbox)
        app.state.limiter = app.state.inbox.limiter  # IpRateLimit's, shared with the inbox's
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        channel_ctx = ChannelContext(live, client, http, identity().key, app.state.inbox.accept)
        app.state.channels = ChannelManager(channel_ctx)
        delivery = Delivery(client, app.state.channels.get, identity().key,
                            wanted=app.state.channels.wanted)  # fmt: skip
        loop = asyncio.get_running_loop()
        control = _join_control(live, url, getattr(app.state, "bind", None),
                                on_reload=lambda: loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(app.state.channels.sync())))  # fmt: skip
        app.state.outbound.start()
        await app.state.channels.sync()
        await delivery.start()
        publish = asyncio.create_task(_publish_channels(control, app.state.channels, live))
        try:
            yield
        finally:
            publish.cancel()
            control.stop()
            await delivery.stop()
            await app.state.channels.stop()
            await app.state.outbound.stop()
            await http.aclose()
            await app.state.mailbox.aclose()
            await client.aclose()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/api/message", post_message, methods=["POST"]),
        Route("/api/messages/{message_id}", get_message, methods=["GET"]),
        Route("/api/sessions/{session:path}/stop", stop_session, methods=["POST"]),
        Mount("/webhooks", app=WebhookRouter()),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),  # ids may hold a "/"
        Route("/openapi.json", openapi_json, methods=["GET"]),
        WebSocketRoute("/ws", ws_endpoint),
        *node_routes(live),  # /nodes/register, /nodes/heartbeat, /nodes/connect
    ]
    middleware = [
        Middleware(TrailingSlash),
        Middleware(IpRateLimit, live=live),  # first: floods of refused requests count too
        Middleware(RequestGuard, live=live),
        Middleware(BearerAuth, live=live, protected_prefixes=PROTECTED_PREFIXES),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})  # fmt: skip
    app.router.redirect_slashes = False  # TrailingSlash serves both forms; a redirect loops
    app.state.live = live  # before the lifespan: __main__ gives it to the connection guard
    return app


def _join_control(
    live: LiveConfig,
    url: str,
    bind: tuple[str, int] | None,
    *,
    on_reload: Callable[[], object],
) -> ControlListener:
    """Register with the fleet and take part in config reloads (a thread of its own);
    ``on_reload`` runs (in that thread) after each reload was applied. The registry record
    says where /metrics is served (``bind``: the address uvicorn listens on, set by
    ``__main__``; else gateway.host and port) and the channels' states."""
    from claw_worker.logs import config_secrets, setup_logging

    gateway = live.config.gateway
    host, port = bind or (gateway.host, gateway.port)
    # Whether /metrics wants the token is the ingress's to say: it may come from the
    # environment (CLAW_GATEWAY_TOKEN, as the systemd units and compose give it), which a
    # clawctl reading only the config file cannot see.
    metrics: dict[str, object] = {"host": host, "port": port, "path": "/metrics",
                                  "token": bool(gateway.token)}  # fmt: skip
    info: dict[str, object] = {
        "config": str(config_path().absolute()),
        "metrics": metrics,
        "channels": {},  # present from the start: the heartbeat thread reads the dict
    }
    redis_client = sync_client(url)
    record_url(url)  # for clawctl (config/running.py)
    listener = ControlListener(redis_client, identity(), info=info)

    def apply(new: Config) -> None:
        old = live.config
        # What can fail first, so that a failure leaves the old config in effect whole.
        if old.logging != new.logging or config_secrets(old) != config_secrets(new):
            setup_logging(new, identity().log_name)
        live.swap(new)
        metrics["token"] = bool(new.gateway.token)
        on_reload()  # channels enabled, disabled or changed by the reload

    ReloadParticipant(
        redis_client, identity(), config_file=config_path, current=lambda: live.config,
        apply=apply,
    ).attach(listener)  # fmt: skip
    return listener.start()


async def _publish_channels(
    control: ControlListener, channels: ChannelManager, live: LiveConfig
) -> None:
    """Keep the channels' states (started, failing and why) in this process's registry
    record, for ``clawctl status``; read here, on the loop that changes them."""
    from claw_worker.logs import Redactor, config_secrets

    built_for, redactor = None, Redactor()
    while True:
        stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
        config = live.config
        if config is not built_for:  # a reload: its secrets may differ (compiled once each)
            built_for, redactor = config, Redactor(config_secrets(config))
        states = {}
        for name, facts in channels.describe().items():
            error = facts.get("error")
            states[name] = {
                "started": bool(facts.get("started")),
                "error": redactor.scrub(str(error))[:200] if error else None,
                "restarts": int(facts.get("restarts") or 0),
            }
        control.info["channels"] = states  # one assignment: the heartbeat reads whole dicts
        await asyncio.sleep(CHANNELS_EVERY_SEC)
