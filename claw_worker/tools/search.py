"""Search tools: ``find_files`` (glob) and ``grep_files`` (regex), confined to the workspace.

Both walk with ``os.walk`` without following directory symlinks, and skip file symlinks
that resolve outside the workspace, so a link cannot widen the search beyond it. Every
walk is capped: a model asking for ``**/*`` in a home directory must get an answer, not
a stalled worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from pydantic import Field

from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.files import resolve_path

# Directories that are never what the model is looking for and are often huge.
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", ".tox"}
)  # fmt: skip
MAX_WALK_ENTRIES = 20_000  # files looked at by find_files
MAX_GREP_FILES = 5_000  # files opened by grep_files
MAX_GREP_BYTES_PER_FILE = 1024 * 1024
MAX_LINE_CHARS = 300
_BINARY_PROBE = 8192


def walk_files(root: Path, ctx: ToolContext) -> Iterator[Path]:
    """Files under ``root`` in a stable order, pruning SKIP_DIRS and escaping symlinks."""
    workspace = ctx.workspace.resolve()
    restrict = ctx.config.tools.restrict_to_workspace
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if (restrict and not target.is_relative_to(workspace)) or not target.is_file():
                    continue
            yield path


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over '/'-separated relative paths: ``**`` spans directories."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_matches(pattern: str, rel: str) -> bool:
    """A pattern without '/' matches the file name anywhere (like ``find -name``)."""
    target = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
    return glob_regex(pattern).match(target) is not None


def _root(path: str, ctx: ToolContext) -> Path:
    root = resolve_path(path, ctx)
    if not root.is_dir():
        raise ToolError(f"not a directory: {path}")
    return root


class FindFilesParams(ToolParams):
    pattern: str = Field(
        min_length=1,
        description="Glob, e.g. '*.py' (any depth, by name) or 'src/**/test_*.py' (by path).",
    )
    path: str = Field(".", description="Directory to search, relative to the workspace.")
    max_results: int = Field(200, ge=1, le=1000)


class FindFilesTool(Tool[FindFilesParams]):
    name = "find_files"
    description = "Find files in the workspace whose path matches a glob pattern."
    Params = FindFilesParams

    def execute(self, params: FindFilesParams, ctx: ToolContext) -> str:
        root = _root(params.path, ctx)
        found: list[str] = []
        for seen, path in enumerate(walk_files(root, ctx)):
            if seen >= MAX_WALK_ENTRIES:
                found.append(f"... [stopped after looking at {MAX_WALK_ENTRIES} files]")
                break
            rel = path.relative_to(root).as_posix()
            if glob_matches(params.pattern, rel):
                if len(found) == params.max_results:
                    found.append(f"... [more than {params.max_results} matches, list cut]")
                    break
                found.append(rel)
        return "\n".join(found) if found else f"No files match {params.pattern!r}"


class GrepFilesParams(ToolParams):
    pattern: str = Field(min_length=1, description="Python regular expression.")
    path: str = Field(".", description="Directory to search, relative to the workspace.")
    glob: str | None = Field(None, description="Only files matching this glob, e.g. '*.py'.")
    ignore_case: bool = False
    max_matches: int = Field(100, ge=1, le=1000)


class GrepFilesTool(Tool[GrepFilesParams]):
    name = "grep_files"
    description = (
        "Search workspace text files for a regular expression; returns path:line: text. "
        "Binary files are skipped."
    )
    Params = GrepFilesParams

    def execute(self, params: GrepFilesParams, ctx: ToolContext) -> str:
        try:
            regex = re.compile(params.pattern, re.IGNORECASE if params.ignore_case else 0)
        except re.error as exc:
            raise ToolError(f"invalid regular expression {params.pattern!r}: {exc}") from exc
        root = _root(params.path, ctx)
        hits: list[str] = []
        scanned = 0
        notes: list[str] = []
        for path in walk_files(root, ctx):
            rel = path.relative_to(root).as_posix()
            if params.glob and not glob_matches(params.glob, rel):
                continue
            if scanned == MAX_GREP_FILES:
                notes.append(f"[stopped after scanning {MAX_GREP_FILES} files]")
                break
            scanned += 1
            text = _read_text(path)
            if text is None:
                continue
            for lineno, line in enumerate(text.splitlines(), 1):
                if regex.search(line):
                    hits.append(f"{rel}:{lineno}: {line[:MAX_LINE_CHARS]}")
                    if len(hits) == params.max_matches:
                        break
            if len(hits) == params.max_matches:
                notes.append(f"[stopped at {params.max_matches} matches]")
                break
        if not hits:
            return f"No matches for {params.pattern!r} in {scanned} files" + "".join(
                " " + n for n in notes
            )
        return "\n".join(hits + ["... " + n for n in notes])


def _read_text(path: Path) -> str | None:
    """The first MAX_GREP_BYTES_PER_FILE bytes as text, or None for binary/unreadable files."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_GREP_BYTES_PER_FILE)
    except OSError:
        return None
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    return data.decode("utf-8", errors="replace")
