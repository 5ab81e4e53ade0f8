"""Build the provider a Config asks for: a ``FailoverProvider`` over the current proxy
(``providers.proxy``) and the proxies named in ``providers.proxy_fallbacks``, each speaking
its own ``protocol``. Callers only see a ``ChatProvider``.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from redis import Redis

from claw_worker.config.schema import Config, ProxyConfig
from claw_worker.config.store import resolve_api_key
from claw_worker.providers.anthropic import AnthropicProvider
from claw_worker.providers.base import ChatProvider
from claw_worker.providers.failover import FailoverProvider, Route, dedupe
from claw_worker.providers.openai_compat import OpenAICompatProvider
from claw_worker.providers.responses import ResponsesProvider

PRIMARY_PROXY = "proxy"  # the name of providers.proxy in logs, summaries and status


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


def endpoint_id(proxy: ProxyConfig) -> str:
    """The key of a proxy's circuit breaker: what it calls and how (protocol, api_base with
    its scheme and host lower-cased and no trailing slash, auth style and the configured
    key), as ``<host>-<digest>``. Not the proxy's name: once ``api_base`` or the key is
    corrected (a reload), the proxy is a new endpoint with a closed breaker. The key enters
    only the digest, as configured (a key taken from the environment is not read, so
    ``clawctl status`` in another shell finds the same breaker as the workers)."""
    parts = urlsplit(proxy.api_base.strip())
    host = parts.netloc.rpartition("@")[2].lower()  # never the user:password part
    base = f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"
    if parts.query:
        base += f"?{parts.query}"
    material = "\n".join((proxy.protocol, base, proxy.auth, proxy.api_key))
    return f"{host or '-'}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def proxy_breakers(config: Config) -> dict[str, str]:
    """Each proxy of the chain by name, in order, with the key of its breaker (for
    ``clawctl status``: ``breaker.read_state(conn, key)``)."""
    providers = config.providers
    named = {PRIMARY_PROXY: providers.proxy}
    named.update((name, providers.proxies[name]) for name in providers.proxy_fallbacks)
    return {name: endpoint_id(proxy) for name, proxy in named.items()}


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
    routes = [Route(PRIMARY_PROXY, primary, primary_models(config), compacts, endpoint_id(current),
                    current.protocol)]  # fmt: skip
    for name in config.providers.proxy_fallbacks:
        proxy = config.providers.proxies[name]
        provider = build_proxy(proxy)
        if provider is not None:  # a fallback without api_base cannot be tried
            routes.append(Route(name, provider, dedupe(proxy.models), endpoint=endpoint_id(proxy),
                                protocol=proxy.protocol))  # fmt: skip
    return FailoverProvider(
        routes, redis_client=redis, breaker_threshold=breaker_threshold, cooldown_sec=cooldown_sec
    )


def resolve_model(config: Config) -> str:
    """``agents.defaults.model``, else the first of ``providers.proxy.models``, else ""."""
    models = config.providers.proxy.models
    return config.agents.defaults.model or (models[0] if models else "")
