"""LLM providers: typed responses and errors, the OpenAI-compatible client, the registry."""

from claw_worker.providers.base import (
    ChatProvider,
    ContextTooLong,
    LLMResponse,
    ProviderError,
    ToolCall,
)
from claw_worker.providers.failover import FailoverProvider
from claw_worker.providers.openai_compat import OpenAICompatProvider
from claw_worker.providers.registry import build_provider, resolve_model

__all__ = [
    "ChatProvider",
    "ContextTooLong",
    "FailoverProvider",
    "LLMResponse",
    "OpenAICompatProvider",
    "ProviderError",
    "ToolCall",
    "build_provider",
    "resolve_model",
]
