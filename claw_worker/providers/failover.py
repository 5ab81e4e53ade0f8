"""A ``ChatProvider`` that tries several models and proxies in order until one answers.

Order: the models of the current proxy (the requested model first), then each fallback
proxy with its own models. What a failure means decides the next step (see
``base.classify``):

- rate_limit: wait when the server's Retry-After is short, retry once, else move on;
- routing (unknown model) and transient (5xx, resets, timeouts): the next model;
- auth: the rest of this proxy's models would fail the same way, so the next proxy;
- context_too_long: raised at once as ``ContextTooLong`` (the agent compacts and retries);
- anything else (a 4xx about the request): raised, since another model would refuse too.

A proxy that failed ``breaker_threshold`` calls in a row is skipped for ``cooldown_sec``
(``breaker.Breakers``; state in Redis when a client is given, so all hosts agree).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from claw_worker.providers.base import (
    ChatProvider,
    ContextTooLong,
    LLMResponse,
    Message,
    ProviderError,
    ToolSchema,
)
from claw_worker.providers.breaker import Breakers

log = structlog.get_logger(__name__)

# Failures that say something about the proxy's health, so they feed its breaker. An
# unknown model or a bad request is about the request, not the proxy.
_PROXY_FAILURES = frozenset({"transient", "rate_limit", "auth"})


@dataclass(frozen=True)
class Route:
    """One proxy: its name (breaker key), client and models in order of preference."""

    name: str
    provider: ChatProvider
    models: tuple[str, ...] = ()
    # protocol=responses with supports_responses_compact: the provider has ``compact()``.
    compacts: bool = False


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
            raise ProviderError(f"proxy {route.name} does not support native compaction")
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
        for index, route in enumerate(self.routes):
            state = self.breakers.state(route.name)
            if state.is_open():
                until = time.strftime("%H:%M:%S", time.localtime(state.open_until))
                attempts.append(Attempt(route.name, "", "breaker_open", f"until {until}"))
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
                except ContextTooLong:
                    raise
                except ProviderError as exc:
                    if exc.kind == "other":
                        raise
                    errors.append(exc)
                    attempts.append(Attempt(route.name, name, exc.kind, str(exc)[:300]))
                    proxy_failed = proxy_failed or exc.kind in _PROXY_FAILURES
                    nxt = "next proxy" if exc.kind == "auth" else "next model"
                    log.warning(
                        "llm_failover", proxy=route.name, model=name, reason=exc.kind,
                        status=exc.status, switch_to=nxt, error=str(exc)[:300],
                    )  # fmt: skip
                    if exc.kind == "auth":
                        break
                    continue
                if state.failures or proxy_failed:  # skip a Redis write on the happy path
                    self.breakers.record_success(route.name)
                if attempts:
                    log.info("llm_failover_recovered", proxy=route.name, model=name)
                return response
            if proxy_failed and self.breakers.record_failure(route.name):
                log.warning(
                    "llm_breaker_open", proxy=route.name, cooldown_sec=self.breakers.cooldown_sec
                )
        raise _exhausted(attempts, errors)

    def _call(
        self,
        route: Route,
        model: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSchema] | None,
        max_tokens: int,
        temperature: float,
    ) -> LLMResponse:
        try:
            return route.provider.chat(messages, tools, model, max_tokens, temperature)
        except ProviderError as exc:
            wait = exc.retry_after
            if exc.kind != "rate_limit" or wait is None or wait > self.max_wait_sec:
                raise
            # A short Retry-After costs less than a switch (which may lose prompt caching).
            log.info("llm_rate_limited_wait", proxy=route.name, model=model, wait_sec=wait)
            self._sleep(wait)
            return route.provider.chat(messages, tools, model, max_tokens, temperature)


def _exhausted(attempts: list[Attempt], errors: list[ProviderError]) -> ProviderError:
    summary = "; ".join(str(a) for a in attempts) or "no proxy configured"
    last = errors[-1] if errors else None
    # Retryable when some failure may pass later (or every proxy was only breaker-skipped):
    # the message is then redelivered instead of answered with an error.
    retryable = any(e.retryable for e in errors) or not errors
    return ProviderError(
        f"every LLM model and proxy failed ({len(attempts)} attempts): {summary}",
        status=last.status if last else None,
        retryable=retryable,
        retry_after=last.retry_after if last else None,
        kind=last.kind if last else "transient",
    )
