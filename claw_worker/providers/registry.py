"""Build the provider a Config asks for.

Today that is one OpenAI-compatible proxy (``providers.proxy``). Failover over
``providers.proxy_fallbacks`` and other protocols come later: they will be built here, as
another ``ChatProvider`` (a chain wrapping several), so callers do not change.
"""

from __future__ import annotations

from claw_worker.config.schema import Config, ProxyConfig
from claw_worker.config.store import resolve_api_key
from claw_worker.providers.base import ChatProvider
from claw_worker.providers.openai_compat import OpenAICompatProvider


def build_proxy(proxy: ProxyConfig) -> ChatProvider | None:
    """The provider for one proxy entry; None when it has no ``api_base``."""
    if not proxy.api_base:
        return None
    if proxy.protocol != "chat_completions":
        # Only chat completions is spoken so far; failing loudly beats silently mis-talking.
        raise ValueError(f"provider protocol {proxy.protocol!r} is not supported yet")
    return OpenAICompatProvider(
        proxy.api_base,
        resolve_api_key(proxy.api_key),
        auth=proxy.auth,
        timeout_sec=proxy.timeout_sec,
    )


def build_provider(config: Config) -> ChatProvider | None:
    """The provider for ``config``, or None when no LLM is configured (empty api_base)."""
    return build_proxy(config.providers.proxy)


def resolve_model(config: Config) -> str:
    """``agents.defaults.model``, else the first of ``providers.proxy.models``, else ""."""
    models = config.providers.proxy.models
    return config.agents.defaults.model or (models[0] if models else "")
