"""File tools: ``read_file``, ``write_file``, ``edit_file``, ``list_files``, confined to the
workspace, and the one bounded walk of the workspace that the search tools share.

Paths are resolved (symlinks included) before the check, so neither ``..`` nor a symlink
inside the workspace can reach outside it. With ``tools.restrict_to_workspace`` false,
absolute paths anywhere are allowed.

A walk (``walk``) never follows directory symlinks, skips symlink loops and reports them,
opens nothing but regular files (a FIFO blocks its reader forever), and stops at its
``WalkBudget``: a wall-clock deadline (``tools.search_timeout_sec``), a number of directory
entries and of bytes read, or a /stop. One tool call must not hold a worker.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import Field

from claw_worker.fsutil import OutsideWorkspace, read_regular, write_atomic
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

MAX_READ_BYTES = 512 * 1024
MAX_WRITE_CHARS = 1024 * 1024
MAX_LIST_ENTRIES = 500
MAX_PATH_CHARS = 4096  # PATH_MAX
MAX_WALK_ENTRIES = 20_000  # directory entries one walk looks at
MAX_WALK_BYTES = 64 * 1024 * 1024  # file bytes one search reads
_LOOPS_SHOWN = 5


def resolve_path(path: str, ctx: ToolContext) -> Path:
    """``path`` (relative to the workspace, or absolute) resolved; refused if it escapes."""
    workspace = ctx.workspace.resolve()
    try:
        raw = Path(path).expanduser()
    except RuntimeError as exc:  # ~name of an unknown user
        raise ToolError(f"cannot expand {path!r}: {exc}") from exc
    try:
        resolved = (raw if raw.is_absolute() else workspace / raw).resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise ToolError(f"cannot resolve {path!r}: {exc.strerror}") from exc
        raise ToolError(f"path {path!r} is or goes through a symlink loop") from exc
    except ValueError as exc:  # an embedded NUL character
        raise ToolError(f"invalid path {path!r}: {exc}") from exc
    if ctx.config.tools.restrict_to_workspace and not resolved.is_relative_to(workspace):
        raise ToolError(f"path {path!r} is outside the workspace ({workspace}); access refused")
    return resolved


def _shown(path: Path, ctx: ToolContext) -> str:
    workspace = ctx.workspace.resolve()
    return str(path.relative_to(workspace)) if path.is_relative_to(workspace) else str(path)


def confine_to(ctx: ToolContext) -> Path | None:
    """The directory file access must stay in: the workspace, unless
    ``tools.restrict_to_workspace`` is off."""
    return ctx.workspace.resolve() if ctx.config.tools.restrict_to_workspace else None


class WalkBudget:
    """What one walk may spend; ``stopped`` says why it ended early (empty while it has not)."""

    def __init__(
        self, ctx: ToolContext, *, max_entries: int = MAX_WALK_ENTRIES,
        max_bytes: int = MAX_WALK_BYTES,
    ) -> None:  # fmt: skip
        self.within = confine_to(ctx)  # the files read must stay in it
        self.timeout = ctx.config.tools.search_timeout_sec
        self.deadline = time.monotonic() + self.timeout
        self.should_stop = ctx.should_stop
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries = 0
        self.bytes_read = 0
        self.stopped = ""
        self.loops: list[str] = []  # symlink loops skipped, relative to the walk's root

    def spent(self) -> bool:
        if not self.stopped:
            if self.should_stop():
                self.stopped = "stopped because the run was cancelled"
            elif time.monotonic() >= self.deadline:
                self.stopped = f"stopped after {self.timeout:.1f} s"
            elif self.entries >= self.max_entries:
                self.stopped = f"stopped after looking at {self.max_entries} entries"
            elif self.bytes_read >= self.max_bytes:
                self.stopped = f"stopped after reading {self.max_bytes // 2**20} MiB"
        return bool(self.stopped)

    def notes(self) -> list[str]:
        """Lines for the result: loops skipped, and the limit that cut the walk short."""
        notes = []
        if self.loops:
            shown = ", ".join(sorted(self.loops)[:_LOOPS_SHOWN])
            more = ", ..." if len(self.loops) > _LOOPS_SHOWN else ""
            notes.append(f"[skipped {len(self.loops)} symlink loop(s): {shown}{more}]")
        if self.stopped:
            notes.append(f"[{self.stopped}: results are partial]")
        return notes


def walk(
    root: Path, ctx: ToolContext, budget: WalkBudget, *, skip: frozenset[str] = frozenset(),
    listing: bool = False, recursive: bool = True,
) -> Iterator[Path]:  # fmt: skip
    """Regular files under ``root`` (``listing``: every entry, directories too), depth first,
    a directory's files before its subdirectories, each sorted by name.

    Directory symlinks are listed but never entered; a file symlink that resolves outside
    the workspace (when restricted) or to no regular file is not searched.
    """
    workspace = ctx.workspace.resolve()
    restrict = ctx.config.tools.restrict_to_workspace

    def searchable(target: Path) -> bool:
        return target.is_file() and not (restrict and not target.is_relative_to(workspace))

    pending = [root]
    while pending and not budget.spent():
        files, subdirs = _scan(pending.pop(), root, budget, skip, listing, searchable)
        for path in files:
            if budget.spent():
                return
            yield path
        if recursive:
            pending.extend(reversed(subdirs))


def _scan(
    directory: Path, root: Path, budget: WalkBudget, skip: frozenset[str], listing: bool,
    searchable: Callable[[Path], bool],
) -> tuple[list[Path], list[Path]]:  # fmt: skip
    """One directory: the entries to yield and the subdirectories to enter, sorted."""
    files: list[Path] = []
    subdirs: list[Path] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if budget.spent():
                    break
                budget.entries += 1
                path = Path(entry.path)
                with contextlib.suppress(OSError):  # an entry that vanished meanwhile
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in skip:
                            subdirs.append(path)
                            if listing:
                                files.append(path)
                    elif entry.is_symlink():
                        target = _link_target(path, root, budget)
                        if target is not None and (listing or searchable(target)):
                            files.append(path)
                    elif listing or entry.is_file(follow_symlinks=False):
                        files.append(path)
    except OSError:  # unreadable, or a path too long: skipped, as os.walk does
        pass
    return sorted(files), sorted(subdirs)


def _link_target(path: Path, root: Path, budget: WalkBudget) -> Path | None:
    """Where a symlink leads (the link itself when it leads nowhere), or None for a loop,
    which the budget notes."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            return path
        budget.loops.append(path.relative_to(root).as_posix())
        return None


class ReadFileParams(ToolParams):
    path: str = Field(
        min_length=1, max_length=MAX_PATH_CHARS, description="File path, relative to the workspace."
    )


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
        read = read_regular(path, MAX_READ_BYTES, confine_to(ctx))
        if read is None:  # changed since resolve_path looked (a link or FIFO swapped in)
            raise ToolError(f"cannot read {params.path}: not a regular file in the workspace")
        data, size = read
        text = data.decode("utf-8", errors="replace")
        if size > MAX_READ_BYTES:
            text += f"\n... [truncated: file is {size} bytes, read the first {MAX_READ_BYTES}]"
        return text


class WriteFileParams(ToolParams):
    path: str = Field(
        min_length=1, max_length=MAX_PATH_CHARS, description="File path, relative to the workspace."
    )
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
        _write(path, data, params.path, ctx)
        return f"Wrote {len(data)} bytes to {_shown(path, ctx)}"


class ListFilesParams(ToolParams):
    path: str = Field(
        ".",
        max_length=MAX_PATH_CHARS,
        description="Directory, relative to the workspace.",
    )
    recursive: bool = Field(False, description="List subdirectories too.")


class ListFilesTool(Tool[ListFilesParams]):
    name = "list_files"
    description = "List files in a workspace directory (directories end with '/')."
    Params = ListFilesParams

    def execute(self, params: ListFilesParams, ctx: ToolContext) -> str:
        root = resolve_path(params.path, ctx)
        if not root.is_dir():
            raise ToolError(f"not a directory: {params.path}")
        budget = WalkBudget(ctx)
        walker = walk(root, ctx, budget, listing=True, recursive=params.recursive)
        # Take one more than the cap before sorting, so a huge tree costs O(cap), not O(tree).
        found = sorted(itertools.islice(walker, MAX_LIST_ENTRIES + 1))
        entries = []
        for entry in found[:MAX_LIST_ENTRIES]:
            rel = str(entry.relative_to(root))
            entries.append(rel + "/" if entry.is_dir() else rel)
        if len(found) > MAX_LIST_ENTRIES:
            entries.append(f"... [more than {MAX_LIST_ENTRIES} entries, listing cut]")
        entries += ["... " + note for note in budget.notes()]
        return "\n".join(entries) if entries else "(empty directory)"


class EditFileParams(ToolParams):
    path: str = Field(
        min_length=1, max_length=MAX_PATH_CHARS, description="File path, relative to the workspace."
    )
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
        read = read_regular(path, MAX_READ_BYTES + 1, confine_to(ctx))
        if read is None:
            raise ToolError(f"cannot read {params.path}: not a regular file in the workspace")
        if read[1] > MAX_READ_BYTES:
            raise ToolError(f"{params.path} is larger than {MAX_READ_BYTES} bytes; not edited")
        try:
            text = read[0].decode("utf-8")
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
        _write(path, data, params.path, ctx)
        times = "1 occurrence" if count == 1 else f"{count} occurrences"
        return f"Replaced {times} in {_shown(path, ctx)}"


def _write(path: Path, data: bytes, shown: str, ctx: ToolContext) -> None:
    """Replace the resolved ``path`` atomically; refused if a link swapped in since it was
    resolved now leads out of the workspace (the write never follows one)."""
    try:
        write_atomic(path, data, confine_to(ctx))
    except OutsideWorkspace as exc:
        raise ToolError(f"path {shown!r} is outside the workspace; access refused") from exc
    except NotADirectoryError as exc:
        raise ToolError(f"cannot write {shown!r}: a parent is not a directory") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a directory on the way became a symlink
            raise ToolError(f"cannot write {shown!r}: the path changed while writing") from exc
        raise
