"""Build the provider a Config asks for: a ``FailoverProvider`` over the current proxy
(``providers.proxy``) and the proxies named in ``providers.proxy_fallbacks``, each speaking
its own ``protocol``. Callers only see a ``ChatProvider``.
"""

from __future__ import annotations

from redis import Redis

from claw_worker.config.schema import Config, ProxyConfig
from claw_worker.config.store import resolve_api_key
from claw_worker.providers.anthropic import AnthropicProvider
from claw_worker.providers.base import ChatProvider
from claw_worker.providers.failover import FailoverProvider, Route, dedupe
from claw_worker.providers.openai_compat import OpenAICompatProvider
from claw_worker.providers.responses import ResponsesProvider

PRIMARY_PROXY = "proxy"  # the breaker name of providers.proxy


def build_proxy(proxy: ProxyConfig) -> ChatProvider | None:
    """The client for one proxy entry, in its protocol; None when it has no ``api_base``."""
    if not proxy.api_base:
        return None
    key = resolve_api_key(proxy.api_key)
    if proxy.protocol == "anthropic":
        return AnthropicProvider(
            proxy.api_base, key, timeout_sec=proxy.timeout_sec, stream=proxy.stream
        )
    if proxy.protocol == "responses":
        return ResponsesProvider(
            proxy.api_base, key, auth=proxy.auth, timeout_sec=proxy.timeout_sec, stream=proxy.stream
        )
    return OpenAICompatProvider(
        proxy.api_base, key, auth=proxy.auth, timeout_sec=proxy.timeout_sec, stream=proxy.stream
    )


def primary_models(config: Config) -> tuple[str, ...]:
    """The current proxy's models in order: the default model, its fallbacks, the rest."""
    defaults = config.agents.defaults
    return dedupe([defaults.model, *defaults.model_fallbacks, *config.providers.proxy.models])


def proxy_names(config: Config) -> list[str]:
    """The breaker names of every proxy in the chain, in order (for ``clawctl status``)."""
    return [PRIMARY_PROXY, *config.providers.proxy_fallbacks]


def build_provider(
    config: Config,
    redis: Redis | None = None,
    *,
    breaker_threshold: int = 3,
    cooldown_sec: float = 60.0,
) -> ChatProvider | None:
    """The provider for ``config``, or None when no LLM is configured (empty api_base)."""
    current = config.providers.proxy
    primary = build_proxy(current)
    if primary is None:
        return None
    compacts = current.protocol == "responses" and current.supports_responses_compact
    routes = [Route(PRIMARY_PROXY, primary, primary_models(config), compacts)]
    for name in config.providers.proxy_fallbacks:
        proxy = config.providers.proxies[name]
        provider = build_proxy(proxy)
        if provider is not None:  # a fallback without api_base cannot be tried
            routes.append(Route(name, provider, dedupe(proxy.models)))
    return FailoverProvider(
        routes, redis_client=redis, breaker_threshold=breaker_threshold, cooldown_sec=cooldown_sec
    )


def resolve_model(config: Config) -> str:
    """``agents.defaults.model``, else the first of ``providers.proxy.models``, else ""."""
    models = config.providers.proxy.models
    return config.agents.defaults.model or (models[0] if models else "")
