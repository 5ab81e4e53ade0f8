"""Agent tools: the interface (``base``), the registry, and one module per kind of tool."""

from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.registry import ToolRegistry, default_tools

__all__ = ["Tool", "ToolContext", "ToolError", "ToolParams", "ToolRegistry", "default_tools"]
