"""Path traversal and symlink escapes against each file tool that takes a path (read_file,
write_file, edit_file, list_files, find_files, grep_files, repo_map), through the real
registry with ``tools.restrict_to_workspace`` on (the default): nothing outside the
workspace is read, listed, searched or written."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, default_tools
from tests.campaign import record

SECRET = "outside-secret-" + uuid.uuid4().hex


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace and, next to it, a directory it must not reach, with every kind of
    symlink from the one to the other."""
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(f"token = {SECRET}\n")
    (outside / "leaky.py").write_text("def leaked_function():\n    return 1\n")
    (workspace / "sub").mkdir()
    (workspace / "mine.txt").write_text("mine\n")
    (workspace / "link_dir").symlink_to(outside)  # absolute
    (workspace / "link_file").symlink_to(outside / "secret.txt")
    (workspace / "rel_link").symlink_to(Path("..") / "outside")  # relative
    (workspace / "sub" / "up").symlink_to(Path("..") / "..")
    (workspace / "chain").symlink_to("chain2")  # a chain of links ending outside
    (workspace / "chain2").symlink_to(outside)
    (workspace / "dangling").symlink_to(outside / "new.txt")  # write through it = create outside
    return workspace, outside


TRAVERSALS = [
    "../outside/secret.txt",
    "{outside}/secret.txt",
    "link_file",
    "link_dir/secret.txt",
    "rel_link/secret.txt",
    "sub/../../outside/secret.txt",
    "sub/up/outside/secret.txt",
    "chain/secret.txt",
    "./link_dir/../link_dir/secret.txt",
    "mine.txt/../../outside/secret.txt",
    "//{outside}//secret.txt",
    "{workspace}/../outside/secret.txt",
]
DIRECTORIES = ["..", "{outside}", "link_dir", "rel_link", "sub/up", "chain", "sub/../..", "/"]
NEW_FILES = ["../outside/new.txt", "link_dir/new.txt", "dangling", "sub/up/outside/new.txt",
             "chain/new.txt", "{outside}/new.txt", "rel_link/new.txt"]  # fmt: skip


def fill(template: str, workspace: Path, outside: Path) -> str:
    return template.format(outside=outside, workspace=workspace)


def test_file_tools_cannot_escape_the_workspace(layout: tuple[Path, Path]) -> None:
    workspace, outside = layout
    ctx = ToolContext(workspace, "t:1", Config())
    assert ctx.config.tools.restrict_to_workspace
    tools = default_tools(ctx.config)
    before = {p: p.read_bytes() for p in outside.iterdir()}
    attempts: list[tuple[str, dict[str, Any]]] = []
    for path in TRAVERSALS:
        target = fill(path, workspace, outside)
        attempts += [
            ("read_file", {"path": target}),
            ("write_file", {"path": target, "content": "overwritten"}),
            ("edit_file", {"path": target, "old_string": SECRET, "new_string": "edited"}),
        ]
    for path in NEW_FILES:
        attempts.append(("write_file", {"path": fill(path, workspace, outside), "content": "x"}))
    for path in DIRECTORIES:
        target = fill(path, workspace, outside)
        attempts += [
            ("list_files", {"path": target}),
            ("find_files", {"pattern": "*secret*", "path": target}),
            ("grep_files", {"pattern": SECRET, "path": target}),
            ("repo_map", {"path": target}),
        ]
    # From the workspace itself: the walks must not follow the links out.
    attempts += [
        ("list_files", {"path": "."}),
        ("find_files", {"pattern": "**/secret.txt"}),
        ("find_files", {"pattern": "*.py"}),
        ("grep_files", {"pattern": SECRET}),
        ("grep_files", {"pattern": "token", "include": "*"}),
        ("repo_map", {"path": "."}),
    ]
    tried = rejected = escapes = server_errors = 0
    leaks = []
    for name, args in attempts:
        tried += 1
        result = tools.run(name, args, ctx)
        shown = result  # what the tool found, without the arguments it echoes back
        for value in args.values():
            shown = shown.replace(str(value), "")
        leaked = (
            SECRET in shown
            or "leaked_function" in shown
            or "secret.txt" in shown
            or (outside / "new.txt").exists()
            or {p: p.read_bytes() for p in outside.iterdir()} != before
        )
        if result.startswith(f"Error: {name} failed:"):  # the registry's catch-all for a bug
            server_errors += 1
        if leaked:
            escapes += 1
            leaks.append((name, args, result))
        else:
            rejected += 1
    record("file tools: traversal/symlink escape", tried=tried, rejected=rejected,
           escapes=escapes, server_errors=server_errors)  # fmt: skip
    assert (escapes, server_errors) == (0, 0), leaks
    # Inside the workspace the tools still work, symlinked paths included.
    assert tools.run("read_file", {"path": "sub/../mine.txt"}, ctx).startswith("mine")
    assert "outside" in tools.run("read_file", {"path": "link_file"}, ctx)


def test_an_absolute_path_is_refused_with_a_clear_reason(layout: tuple[Path, Path]) -> None:
    workspace, outside = layout
    ctx = ToolContext(workspace, "t:1", Config())
    result = default_tools(ctx.config).run("read_file", {"path": str(outside / "secret.txt")}, ctx)
    assert result.startswith("Error:") and "workspace" in result, result
    assert os.path.exists(outside / "secret.txt")
