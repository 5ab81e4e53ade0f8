"""``repo_map``: the files of a code tree and their top-level definitions, with line numbers.

Python is parsed with ``ast`` (classes, functions, and the methods of top-level classes);
other languages get one regex for the usual definition keywords. It is a map to decide
what to ``read_file`` next, not an index: files, definitions and bytes are all capped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import re2
from pydantic import Field

from claw_worker.fsutil import read_regular
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.files import WalkBudget, resolve_path
from claw_worker.tools.search import walk_files

MAX_FILE_BYTES = 512 * 1024
MAX_DEFS_PER_FILE = 60
REGEX_LANGS = frozenset(
    {".js", ".jsx", ".ts", ".tsx", ".mjs", ".go", ".rs", ".rb", ".java", ".kt", ".swift",
     ".php", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".scala", ".lua", ".sh"}
)  # fmt: skip
# A definition at the start of a line (top level): optional modifiers, a keyword, a name.
# Go methods carry a receiver: ``func (s *Server) Start(``. RE2: the files are whatever the
# model wrote, so no line may make the match backtrack while holding the GIL.
_DEF = re2.compile(
    r"^(?:export\s+)?(?:default\s+)?(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?"
    r"(?:public\s+|private\s+|protected\s+|static\s+|abstract\s+|final\s+)*"
    r"(def|func|fn|class|function|struct|interface|trait|enum|impl|module)\s+"
    r"(\([^)]*\)\s*)?([A-Za-z_$][\w$]*)"
)


class RepoMapParams(ToolParams):
    path: str = Field(".", description="Root of the code tree, relative to the workspace.")
    max_files: int = Field(200, ge=1, le=1000, description="Stop after this many source files.")


class RepoMapTool(Tool[RepoMapParams]):
    name = "repo_map"
    description = (
        "Map a code tree: each source file with its top-level classes and functions and their "
        "line numbers (Python via ast; JS/TS/Go/Rust/... via simple patterns)."
    )
    Params = RepoMapParams

    def execute(self, params: RepoMapParams, ctx: ToolContext) -> str:
        root = resolve_path(params.path, ctx)
        if not root.is_dir():
            raise ToolError(f"not a directory: {params.path}")
        out: list[str] = []
        files = 0
        budget = WalkBudget(ctx)
        for path in walk_files(root, ctx, budget):
            suffix = path.suffix.lower()
            if suffix != ".py" and suffix not in REGEX_LANGS:
                continue
            if files == params.max_files:
                out.append(f"... [stopped at {params.max_files} files]")
                break
            files += 1
            out.append(path.relative_to(root).as_posix())
            out.extend("  " + d for d in _definitions(path, suffix, budget.within))
        out.extend(budget.notes())  # symlink loops skipped, or the limit that cut it short
        return "\n".join(out) if out else f"No source files under {params.path}"


def _definitions(path: Path, suffix: str, within: Path | None) -> list[str]:
    read = read_regular(path, MAX_FILE_BYTES + 1, within)  # never blocks on a FIFO swapped in
    if read is None:
        return ["(unreadable, or no longer a regular file)"]
    data = read[0]
    text = data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
    defs = _python_defs(text) if suffix == ".py" else _regex_defs(text)
    if len(defs) > MAX_DEFS_PER_FILE:
        defs = [*defs[:MAX_DEFS_PER_FILE], f"... [{len(defs) - MAX_DEFS_PER_FILE} more]"]
    if len(data) > MAX_FILE_BYTES:
        defs.append(f"... [only the first {MAX_FILE_BYTES} bytes mapped]")
    return defs


def _python_defs(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        # Fall back to patterns: a file mid-edit still deserves a map.
        return [f"(syntax error: {getattr(exc, 'msg', exc)})", *_regex_defs(text)]
    defs: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            defs.append(f"{node.lineno}: class {node.name}")
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    defs.append(f"  {item.lineno}: def {item.name}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
            defs.append(f"{node.lineno}: {prefix} {node.name}")
    return defs


def _regex_defs(text: str) -> list[str]:
    defs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        match = _DEF.match(line)
        if match:
            keyword, receiver, name = match.groups()
            shown = f"{keyword} {receiver.strip()} {name}" if receiver else f"{keyword} {name}"
            defs.append(f"{lineno}: {shown}")
    return defs
