"""Search tools: ``find_files`` (glob) and ``grep_files`` (regex), confined to the workspace.

Patterns from the model run on RE2 (``google-re2``), whose matching time is linear in the
text. Python's ``re`` backtracks: ``(a+)+$`` on a line of ``a``s, or the regex of a glob
with many ``**/``, runs for minutes while holding the GIL, which freezes every conversation
of the worker process. RE2 refuses what it cannot do in linear time (backreferences,
lookaround) with an error the model can act on.

Walks go through ``files.walk`` (no directory symlinks followed, symlink loops skipped and
reported, regular files only) under a ``WalkBudget``: ``tools.search_timeout_sec``, a
number of entries and of bytes, or a /stop end it, and the result then says it is partial.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import re2
from pydantic import Field

from claw_worker.fsutil import read_regular
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.files import MAX_PATH_CHARS, WalkBudget, resolve_path, walk

# Directories that are never what the model is looking for and are often huge.
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", ".tox"}
)  # fmt: skip
MAX_PATTERN_CHARS = 1000
MAX_GREP_FILES = 5_000  # files opened by grep_files
MAX_GREP_BYTES_PER_FILE = 1024 * 1024
MAX_LINE_CHARS = 300
_BINARY_PROBE = 8192
_LINES_PER_CHECK = 4096  # lines matched between two looks at the budget

Regex = Any  # a compiled re2 pattern (google-re2 ships no type hints)

_RE2_UNSUPPORTED = (
    "grep_files uses RE2 syntax, which always runs in linear time; it has no backreferences "
    r"(\1, (?P=name)), lookahead or lookbehind ((?=...), (?!...), (?<=...), (?<!...)), "
    r"atomic groups (?>...), possessive quantifiers (a++), conditionals, comments (?#...), "
    r"verbose mode (?x); write \z for Python's \Z"
)


def walk_files(root: Path, ctx: ToolContext, budget: WalkBudget | None = None) -> Iterator[Path]:
    """Regular files under ``root`` in a stable order, pruning SKIP_DIRS, within ``budget``."""
    return walk(root, ctx, budget or WalkBudget(ctx), skip=SKIP_DIRS)


def _options(**values: Any) -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every rejected pattern to stderr
    for name, value in values.items():
        setattr(options, name, value)
    return options


def compile_regex(pattern: str, *, ignore_case: bool = False) -> Regex:
    """The model's regex on RE2, or a ToolError that says what RE2 does not support."""
    try:
        return re2.compile(pattern, _options(case_sensitive=not ignore_case))
    except re2.error as exc:
        detail = _detail(exc)
        message = f"invalid regular expression {pattern!r}: {detail}"
        if detail.startswith(("invalid perl operator", "invalid escape", "bad repetition op")):
            message += f". {_RE2_UNSUPPORTED}"
        elif detail.startswith("invalid repetition size"):
            message += ". A count in {m,n} is at most 1000"
        elif detail.startswith("pattern too large"):
            message += ". Use fewer or smaller counted repetitions"
        raise ToolError(message) from exc


def _detail(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> Regex:
    """A glob as an RE2 regex over '/'-separated relative paths: ``**`` spans directories."""
    while "**/**/" in pattern:  # equivalent, and keeps the regex small
        pattern = pattern.replace("**/**/", "**/")
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
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2 + _negated(pattern, i))) != -1:
            negated = _negated(pattern, i)  # [!a] or [^a]; a ']' first in the body is literal
            body = "".join(c if c == "-" else _literal(c) for c in pattern[i + 1 + negated : end])
            out.append("[" + "^" * negated + body + "]")
            i = end + 1
        else:
            out.append(_literal(pattern[i]))
            i += 1
    try:
        return re2.compile("".join(out), _options(dot_nl=True))
    except re2.error as exc:
        raise ToolError(f"invalid glob {pattern!r}: {_detail(exc)}") from exc


def _negated(pattern: str, i: int) -> int:
    return int(pattern[i + 1 : i + 2] in ("!", "^"))


def _literal(char: str) -> str:
    return char if char.isalnum() or ord(char) > 127 else "\\" + char


def glob_matches(pattern: str, rel: str) -> bool:
    """A pattern without '/' matches the file name anywhere (like ``find -name``)."""
    target = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
    return glob_regex(pattern).fullmatch(target.encode("utf-8", "replace")) is not None


def _root(path: str, ctx: ToolContext) -> Path:
    root = resolve_path(path, ctx)
    if not root.is_dir():
        raise ToolError(f"not a directory: {path}")
    return root


def _with_notes(lines: list[str], budget: WalkBudget) -> str:
    return "\n".join(lines + ["... " + note for note in budget.notes()])


class FindFilesParams(ToolParams):
    pattern: str = Field(
        min_length=1,
        max_length=MAX_PATTERN_CHARS,
        description="Glob, e.g. '*.py' (any depth, by name) or 'src/**/test_*.py' (by path).",
    )
    path: str = Field(
        ".", max_length=MAX_PATH_CHARS, description="Directory to search, in the workspace."
    )
    max_results: int = Field(200, ge=1, le=1000)


class FindFilesTool(Tool[FindFilesParams]):
    name = "find_files"
    description = "Find files in the workspace whose path matches a glob pattern."
    Params = FindFilesParams

    def execute(self, params: FindFilesParams, ctx: ToolContext) -> str:
        glob_regex(params.pattern)  # a bad glob fails before any walking
        root = _root(params.path, ctx)
        budget = WalkBudget(ctx)
        found: list[str] = []
        for path in walk_files(root, ctx, budget):
            rel = path.relative_to(root).as_posix()
            if glob_matches(params.pattern, rel):
                if len(found) == params.max_results:
                    found.append(f"... [more than {params.max_results} matches, list cut]")
                    break
                found.append(rel)
        if not found:
            return " ".join([f"No files match {params.pattern!r}", *budget.notes()])
        return _with_notes(found, budget)


class GrepFilesParams(ToolParams):
    pattern: str = Field(
        min_length=1,
        max_length=MAX_PATTERN_CHARS,
        description="Regular expression, RE2 syntax (no backreferences or lookaround).",
    )
    path: str = Field(
        ".", max_length=MAX_PATH_CHARS, description="Directory to search, in the workspace."
    )
    glob: str | None = Field(
        None,
        max_length=MAX_PATTERN_CHARS,
        description="Only files matching this glob, e.g. '*.py'.",
    )
    ignore_case: bool = False
    max_matches: int = Field(100, ge=1, le=1000)


class GrepFilesTool(Tool[GrepFilesParams]):
    name = "grep_files"
    description = (
        "Search workspace text files for a regular expression (RE2 syntax); returns "
        "path:line: text. Binary files are skipped."
    )
    Params = GrepFilesParams

    def execute(self, params: GrepFilesParams, ctx: ToolContext) -> str:
        regex = compile_regex(params.pattern, ignore_case=params.ignore_case)
        if params.glob:
            glob_regex(params.glob)
        root = _root(params.path, ctx)
        budget = WalkBudget(ctx)
        hits: list[str] = []
        scanned = 0
        notes: list[str] = []
        for path in walk_files(root, ctx, budget):
            rel = path.relative_to(root).as_posix()
            if params.glob and not glob_matches(params.glob, rel):
                continue
            if scanned == MAX_GREP_FILES:
                notes.append(f"[stopped after scanning {MAX_GREP_FILES} files]")
                break
            scanned += 1
            data = _read_text(path, budget)
            if data is not None:
                _grep(regex, data, rel, hits, params.max_matches, budget)
            if len(hits) == params.max_matches:
                notes.append(f"[stopped at {params.max_matches} matches]")
                break
        if not hits:
            return " ".join(
                [f"No matches for {params.pattern!r} in {scanned} files", *budget.notes(), *notes]
            )
        return _with_notes(hits, budget) + "".join("\n... " + n for n in notes)


def _grep(
    regex: Regex, data: bytes, rel: str, hits: list[str], limit: int, budget: WalkBudget
) -> None:
    """Add ``rel:line: text`` for each matching line of ``data`` until ``limit`` hits."""
    for lineno, line in enumerate(data.splitlines(), 1):
        if lineno % _LINES_PER_CHECK == 0 and budget.spent():
            return
        if regex.search(line):
            shown = line[: MAX_LINE_CHARS * 4].decode("utf-8", "replace")[:MAX_LINE_CHARS]
            hits.append(f"{rel}:{lineno}: {shown}")
            if len(hits) == limit:
                return


def _read_text(path: Path, budget: WalkBudget) -> bytes | None:
    """The first MAX_GREP_BYTES_PER_FILE bytes as UTF-8 (invalid bytes replaced), or None
    for binary, unreadable and non-regular files."""
    read = read_regular(path, MAX_GREP_BYTES_PER_FILE, budget.within)
    if read is None:
        return None
    data = read[0]
    budget.bytes_read += len(data)
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:  # so that '.' matches a stray byte, as it did before
        data = data.decode("utf-8", "replace").encode("utf-8")
    return data
