"""A ``ChatProvider`` that tries several models and proxies in order until one answers.

Order: the models of the current proxy (the requested model first), then each fallback
proxy with its own models. The failure's ``ErrorKind`` (see ``base.classify``) decides the
next step:

- rate_limit: wait when the server's Retry-After is short, retry once, else move on;
- unknown_model, transient (5xx, resets, timeouts) and bad_response: the next model;
- auth: the rest of this proxy's models would fail the same way, so the next proxy;
- context_too_long: raised at once as ``ContextTooLong`` (the agent compacts and retries);
- invalid_request (a 4xx about the request): raised, since another model would refuse too.

When every model and proxy failed, the error raised sums up the attempts and carries the
kind that says what the caller should do: transient or rate_limit (with the shortest
Retry-After) when some failure may pass, else the kind of the refusals.

An endpoint that failed ``breaker_threshold`` calls in a row is skipped for
``cooldown_sec`` (``breaker.Breakers``, keyed by the endpoint, not the proxy's name; state
in Redis when a client is given, so all hosts agree).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from claw_worker import metrics
from claw_worker.providers.base import (
    ChatProvider,
    ErrorKind,
    LLMResponse,
    Message,
    ProviderError,
    ToolSchema,
)
from claw_worker.providers.breaker import Breakers

log = structlog.get_logger(__name__)

# Raised at once: another model or proxy would refuse the same request.
_RAISE = frozenset({ErrorKind.CONTEXT_TOO_LONG, ErrorKind.INVALID_REQUEST})
# The rest of the proxy's models would fail the same way: the next proxy.
_NEXT_PROXY = frozenset({ErrorKind.AUTH})
# Failures that say something about the endpoint's health, so they feed its breaker. An
# unknown model is about the request, not the endpoint.
_PROXY_FAILURES = frozenset(
    {ErrorKind.TRANSIENT, ErrorKind.RATE_LIMIT, ErrorKind.AUTH, ErrorKind.BAD_RESPONSE}
)


@dataclass(frozen=True)
class Route:
    """One proxy: its name (for logs and summaries), client, models in order of preference
    and ``endpoint``, the key of its breaker (``registry.endpoint_id``; the name if empty)."""

    name: str
    provider: ChatProvider
    models: tuple[str, ...] = ()
    # protocol=responses with supports_responses_compact: the provider has ``compact()``.
    compacts: bool = False
    endpoint: str = ""
    protocol: str = ""  # chat_completions, responses, anthropic: a label of its metrics

    @property
    def breaker(self) -> str:
        return self.endpoint or self.name


@dataclass(frozen=True)
class Attempt:
    proxy: str
    model: str
    outcome: str  # the error kind, or "breaker_open"
    detail: str

    def __str__(self) -> str:
        where = f"{self.proxy}/{self.model}" if self.model else self.proxy
        return f"{where}: {self.outcome}: {self.detail}"


def dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


class FailoverProvider:
    def __init__(
        self,
        routes: Sequence[Route],
        *,
        redis_client: redis.Redis | None = None,
        breaker_threshold: int = 3,
        cooldown_sec: float = 60.0,
        max_wait_sec: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not routes:
            raise ValueError("FailoverProvider needs at least one route")
        self.routes = list(routes)
        self.breakers = Breakers(
            redis_client, threshold=breaker_threshold, cooldown_sec=cooldown_sec
        )
        self.max_wait_sec = max_wait_sec
        self._sleep = sleep

    def close(self) -> None:
        for route in self.routes:
            route.provider.close()

    @property
    def can_compact(self) -> bool:
        """Whether the current proxy offers native compaction. Only the current proxy: the
        items it makes are readable by it alone, so a fallback's would be useless."""
        return self.routes[0].compacts

    def compact(self, messages: Sequence[Message], model: str) -> dict[str, Any]:
        """Native compaction of ``messages`` by the current proxy: the value for the
        compaction summary's ``COMPACTION`` key. Errors propagate (the caller keeps the
        history); no failover, as no other proxy can read the result."""
        route = self.routes[0]
        if not route.compacts:
            raise ProviderError(
                f"proxy {route.name} does not support native compaction",
                kind=ErrorKind.INVALID_REQUEST,
            )
        compact = route.provider.compact  # type: ignore[attr-defined]
        return compact(messages, model or next(iter(route.models), ""))  # type: ignore[no-any-return]

    def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        model: str,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse:
        attempts: list[Attempt] = []
        errors: list[ProviderError] = []
        reopen_at: list[float] = []  # when each breaker-skipped endpoint is tried again
        for index, route in enumerate(self.routes):
            state = self.breakers.state(route.breaker)
            if state.is_open():
                until = time.strftime("%H:%M:%S", time.localtime(state.open_until))
                attempts.append(Attempt(route.name, "", "breaker_open", f"until {until}"))
                reopen_at.append(state.open_until)
                metrics.llm_fallback(route.name, "", "breaker_open")
                log.warning("llm_proxy_skipped", proxy=route.name, reason="breaker open")
                continue
            # The caller's model leads on the first proxy; fallback proxies with no models
            # of their own get the caller's model too.
            models = dedupe([model, *route.models]) if index == 0 else route.models
            models = models or dedupe([model])
            proxy_failed = False
            for name in models:
                try:
                    response = self._call(route, name, messages, tools, max_tokens, temperature)
                except ProviderError as exc:
                    if exc.kind in _RAISE:
                        raise
                    errors.append(exc)
                    attempts.append(Attempt(route.name, name, exc.kind, str(exc)[:300]))
                    metrics.llm_fallback(route.name, name, str(exc.kind))
                    proxy_failed = proxy_failed or exc.kind in _PROXY_FAILURES
                    nxt = "next proxy" if exc.kind in _NEXT_PROXY else "next model"
                    log.warning(
                        "llm_failover", proxy=route.name, model=name, reason=exc.kind,
                        status=exc.status, switch_to=nxt, error=str(exc)[:300],
                    )  # fmt: skip
                    if exc.kind in _NEXT_PROXY:
                        break
                    continue
                if state.failures or proxy_failed:  # skip a Redis write on the happy path
                    self.breakers.record_success(route.breaker)
                if attempts:
                    log.info("llm_failover_recovered", proxy=route.name, model=name)
                return response
            if proxy_failed and self.breakers.record_failure(route.breaker):
                metrics.breaker_opened(route.name)
                log.warning(
                    "llm_breaker_open", proxy=route.name, cooldown_sec=self.breakers.cooldown_sec
                )
        raise _exhausted(attempts, errors, reopen_at)

    def _call(
        self,
        route: Route,
        model: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse:
        def once() -> LLMResponse:
            return _measured(route, model, lambda: route.provider.chat(
                messages, tools, model, max_tokens, temperature))  # fmt: skip

        try:
            return once()
        except ProviderError as exc:
            wait = exc.retry_after
            if exc.kind is not ErrorKind.RATE_LIMIT or wait is None or wait > self.max_wait_sec:
                raise
            # A short Retry-After costs less than a switch (which may lose prompt caching).
            log.info("llm_rate_limited_wait", proxy=route.name, model=model, wait_sec=wait)
            self._sleep(wait)
            return once()


def _measured(route: Route, model: str, call: Callable[[], LLMResponse]) -> LLMResponse:
    """One call to one model, counted: latency, outcome and tokens per proxy and model."""
    started = time.monotonic()
    try:
        response = call()
    except ProviderError as exc:
        metrics.llm_call(route.name, model, route.protocol, str(exc.kind),
                         time.monotonic() - started, {})  # fmt: skip
        raise
    metrics.llm_call(route.name, model, route.protocol, "ok", time.monotonic() - started,
                     response.usage)  # fmt: skip
    return response


def _exhausted(
    attempts: list[Attempt], errors: list[ProviderError], reopen_at: list[float]
) -> ProviderError:
    summary = "; ".join(str(a) for a in attempts) or "no proxy configured"
    kind, retry_after = _outcome(errors, reopen_at)
    return ProviderError(
        f"every LLM model and proxy failed ({len(attempts)} attempts): {summary}",
        kind=kind,
        status=errors[-1].status if errors else None,
        retry_after=retry_after,
    )


def _outcome(errors: list[ProviderError], reopen_at: list[float]) -> tuple[ErrorKind, float | None]:
    """What the caller should do once every model and proxy failed: ask again later when
    some failure may pass (transient first: backing off is the shorter wait; else the
    shortest Retry-After of the rate limits), else give up with the refusals' kind."""
    kinds = {e.kind for e in errors}
    if not errors:  # every endpoint was skipped by its breaker: until the first half-opens
        wait = max(0.0, min(reopen_at) - time.time()) if reopen_at else None
        return ErrorKind.TRANSIENT, wait
    for kind in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMIT):
        if kind in kinds:
            waits = [e.retry_after for e in errors if e.kind is kind]
            known = [w for w in waits if w is not None]
            return kind, (min(known) if known and len(known) == len(waits) else None)
    return errors[-1].kind, None
