"""Long-term memory: layered Markdown files in the workspace plus a derived FTS5 index."""

from claw_worker.memory.index import Hit, MemoryIndex, search
from claw_worker.memory.store import LAYERS, append

__all__ = ["LAYERS", "Hit", "MemoryIndex", "append", "search"]
