"""File tools: ``read_file``, ``write_file``, ``list_files``, confined to the workspace.

Paths are resolved (symlinks included) before the check, so neither ``..`` nor a symlink
inside the workspace can reach outside it. With ``tools.restrict_to_workspace`` false,
absolute paths anywhere are allowed.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from pydantic import Field

from claw_worker.fsutil import atomic_write_bytes
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

MAX_READ_BYTES = 512 * 1024
MAX_WRITE_CHARS = 1024 * 1024
MAX_LIST_ENTRIES = 500


def resolve_path(path: str, ctx: ToolContext) -> Path:
    """``path`` (relative to the workspace, or absolute) resolved; refused if it escapes."""
    workspace = ctx.workspace.resolve()
    raw = Path(path).expanduser()
    resolved = (raw if raw.is_absolute() else workspace / raw).resolve()
    if ctx.config.tools.restrict_to_workspace and not resolved.is_relative_to(workspace):
        raise ToolError(f"path {path!r} is outside the workspace ({workspace}); access refused")
    return resolved


def _shown(path: Path, ctx: ToolContext) -> str:
    workspace = ctx.workspace.resolve()
    return str(path.relative_to(workspace)) if path.is_relative_to(workspace) else str(path)


class ReadFileParams(ToolParams):
    path: str = Field(min_length=1, description="File path, relative to the workspace.")


class ReadFileTool(Tool[ReadFileParams]):
    name = "read_file"
    description = "Read a text file from the workspace."
    Params = ReadFileParams

    def execute(self, params: ReadFileParams, ctx: ToolContext) -> str:
        path = resolve_path(params.path, ctx)
        if not path.exists():
            raise ToolError(f"file not found: {params.path}")
        if not path.is_file():
            raise ToolError(f"not a file: {params.path}")
        size = path.stat().st_size
        with path.open("rb") as fh:
            data = fh.read(MAX_READ_BYTES)
        text = data.decode("utf-8", errors="replace")
        if size > MAX_READ_BYTES:
            text += f"\n... [truncated: file is {size} bytes, read the first {MAX_READ_BYTES}]"
        return text


class WriteFileParams(ToolParams):
    path: str = Field(min_length=1, description="File path, relative to the workspace.")
    content: str = Field(max_length=MAX_WRITE_CHARS, description="The whole new file content.")


class WriteFileTool(Tool[WriteFileParams]):
    name = "write_file"
    description = (
        "Write a text file in the workspace (creating parent directories), replacing it whole."
    )
    Params = WriteFileParams

    def execute(self, params: WriteFileParams, ctx: ToolContext) -> str:
        path = resolve_path(params.path, ctx)
        if path.is_dir():
            raise ToolError(f"{params.path} is a directory")
        data = params.content.encode("utf-8")
        atomic_write_bytes(path, data)
        return f"Wrote {len(data)} bytes to {_shown(path, ctx)}"


class ListFilesParams(ToolParams):
    path: str = Field(".", description="Directory, relative to the workspace.")
    recursive: bool = Field(False, description="List subdirectories too.")


class ListFilesTool(Tool[ListFilesParams]):
    name = "list_files"
    description = "List files in a workspace directory (directories end with '/')."
    Params = ListFilesParams

    def execute(self, params: ListFilesParams, ctx: ToolContext) -> str:
        root = resolve_path(params.path, ctx)
        if not root.is_dir():
            raise ToolError(f"not a directory: {params.path}")
        walker = root.rglob("*") if params.recursive else root.iterdir()
        # Take one more than the cap before sorting, so a huge tree costs O(cap), not O(tree).
        found = sorted(itertools.islice(walker, MAX_LIST_ENTRIES + 1))
        entries = []
        for entry in found[:MAX_LIST_ENTRIES]:
            rel = str(entry.relative_to(root))
            entries.append(rel + "/" if entry.is_dir() else rel)
        if len(found) > MAX_LIST_ENTRIES:
            entries.append(f"... [more than {MAX_LIST_ENTRIES} entries, listing cut]")
        return "\n".join(entries) if entries else "(empty directory)"


class EditFileParams(ToolParams):
    path: str = Field(min_length=1, description="File path, relative to the workspace.")
    old_string: str = Field(min_length=1, description="Exact text to replace (whitespace too).")
    new_string: str = Field(max_length=MAX_WRITE_CHARS, description="The replacement text.")
    replace_all: bool = Field(
        False, description="Replace every occurrence; otherwise old_string must occur once."
    )


class EditFileTool(Tool[EditFileParams]):
    name = "edit_file"
    description = (
        "Replace an exact text in a workspace file. old_string must match exactly once "
        "(include surrounding lines to make it unique) unless replace_all is true."
    )
    Params = EditFileParams

    def execute(self, params: EditFileParams, ctx: ToolContext) -> str:
        path = resolve_path(params.path, ctx)
        if not path.is_file():
            raise ToolError(f"file not found: {params.path}")
        if path.stat().st_size > MAX_READ_BYTES:
            raise ToolError(f"{params.path} is larger than {MAX_READ_BYTES} bytes; not edited")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ToolError(f"{params.path} is not UTF-8 text; not edited") from exc
        count = text.count(params.old_string)
        if count == 0:
            raise ToolError(
                f"old_string not found in {params.path}; read the file and copy the text exactly"
            )
        if count > 1 and not params.replace_all:
            raise ToolError(
                f"old_string occurs {count} times in {params.path}; add surrounding lines to "
                "make it unique, or set replace_all"
            )
        data = text.replace(params.old_string, params.new_string).encode("utf-8")
        atomic_write_bytes(path, data)
        times = "1 occurrence" if count == 1 else f"{count} occurrences"
        return f"Replaced {times} in {_shown(path, ctx)}"
