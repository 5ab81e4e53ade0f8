"""LLM providers: typed responses and errors, the OpenAI-compatible client, the registry."""

from claw_worker.providers.base import ChatProvider, LLMResponse, ProviderError, ToolCall
from claw_worker.providers.openai_compat import OpenAICompatProvider
from claw_worker.providers.registry import build_provider, resolve_model

__all__ = [
    "ChatProvider",
    "LLMResponse",
    "OpenAICompatProvider",
    "ProviderError",
    "ToolCall",
    "build_provider",
    "resolve_model",
]
