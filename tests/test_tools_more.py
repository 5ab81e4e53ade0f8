"""edit_file, find_files, grep_files, repo_map, system_info and message, run through the
registry as the agent runs them (message against a real redis-server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from claw_worker.tools import ToolContext, ToolRegistry
from claw_worker.tools import search as search_tools

# -- edit_file ---------------------------------------------------------------------------


def test_edit_file_replaces_one_exact_match(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "a.py").write_text("x = 1\ny = 2\n")
    result = tools.run(
        "edit_file", {"path": "a.py", "old_string": "y = 2", "new_string": "y = 3"}, ctx
    )
    assert result == "Replaced 1 occurrence in a.py"
    assert (workspace / "a.py").read_text() == "x = 1\ny = 3\n"


def test_edit_file_zero_and_many_matches(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    target = workspace / "a.txt"
    target.write_text("foo bar foo\n")
    none = tools.run("edit_file", {"path": "a.txt", "old_string": "baz", "new_string": "q"}, ctx)
    assert none.startswith("Error: old_string not found in a.txt")
    two = tools.run("edit_file", {"path": "a.txt", "old_string": "foo", "new_string": "q"}, ctx)
    assert two.startswith("Error: old_string occurs 2 times in a.txt")
    assert "replace_all" in two
    assert target.read_text() == "foo bar foo\n"  # untouched by the failed edits
    every = {"path": "a.txt", "old_string": "foo", "new_string": "q", "replace_all": True}
    assert tools.run("edit_file", every, ctx) == "Replaced 2 occurrences in a.txt"
    assert target.read_text() == "q bar q\n"


def test_edit_file_bad_arguments(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    missing = tools.run("edit_file", {"path": "a.txt", "old_string": "x"}, ctx)
    assert missing == "Error: invalid arguments for edit_file: new_string: Field required"
    empty = tools.run("edit_file", {"path": "a.txt", "old_string": "", "new_string": "x"}, ctx)
    assert empty.startswith("Error: invalid arguments for edit_file: old_string: ")
    gone = tools.run("edit_file", {"path": "nope.txt", "old_string": "a", "new_string": "b"}, ctx)
    assert gone == "Error: file not found: nope.txt"
    outside = {"path": "../x.txt", "old_string": "a", "new_string": "b"}
    assert "outside the workspace" in tools.run("edit_file", outside, ctx)


# -- find_files / grep_files -------------------------------------------------------------


@pytest.fixture
def tree(workspace: Path) -> Path:
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "pkg" / "core.py").write_text("def alpha():\n    return 'needle'\n")
    (workspace / "src" / "main.py").write_text("import pkg\nprint('Needle in main')\n")
    (workspace / "README.md").write_text("# Project\nno match here\n")
    (workspace / "data.bin").write_bytes(b"needle\0\x01\x02binary")
    (workspace / "node_modules").mkdir()
    (workspace / "node_modules" / "dep.py").write_text("needle = 1\n")
    return workspace


def test_find_files_by_name_and_path(tools: ToolRegistry, ctx: ToolContext, tree: Path) -> None:
    assert tools.run("find_files", {"pattern": "*.py"}, ctx) == "src/main.py\nsrc/pkg/core.py"
    assert tools.run("find_files", {"pattern": "src/**/core.py"}, ctx) == "src/pkg/core.py"
    assert tools.run("find_files", {"pattern": "src/*.py"}, ctx) == "src/main.py"
    assert tools.run("find_files", {"pattern": "*.py", "path": "src/pkg"}, ctx) == "core.py"
    assert tools.run("find_files", {"pattern": "*.rs"}, ctx) == "No files match '*.rs'"
    capped = tools.run("find_files", {"pattern": "*", "max_results": 2}, ctx)
    assert capped.splitlines()[-1] == "... [more than 2 matches, list cut]"
    assert len(capped.splitlines()) == 3
    assert "outside the workspace" in tools.run("find_files", {"pattern": "*", "path": ".."}, ctx)


def test_find_files_does_not_follow_links_out(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    outside = workspace.parent / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("x")
    (workspace / "linkdir").symlink_to(outside)
    (workspace / "link.py").symlink_to(outside / "secret.py")
    assert tools.run("find_files", {"pattern": "*.py"}, ctx) == "No files match '*.py'"


def test_grep_files(tools: ToolRegistry, ctx: ToolContext, tree: Path) -> None:
    result = tools.run("grep_files", {"pattern": "needle"}, ctx)
    # Binary files and node_modules are skipped; matching is case-sensitive by default.
    assert result == "src/pkg/core.py:2:     return 'needle'"
    both = tools.run("grep_files", {"pattern": "needle", "ignore_case": True}, ctx)
    assert both.splitlines() == [
        "src/main.py:2: print('Needle in main')",
        "src/pkg/core.py:2:     return 'needle'",
    ]
    only_md = tools.run("grep_files", {"pattern": "^#", "glob": "*.md"}, ctx)
    assert only_md == "README.md:1: # Project"
    capped = tools.run("grep_files", {"pattern": ".", "max_matches": 3}, ctx)
    assert capped.splitlines()[-1] == "... [stopped at 3 matches]"
    none = tools.run("grep_files", {"pattern": "zzz"}, ctx)
    assert none.startswith("No matches for 'zzz' in ")


def test_grep_invalid_regex(tools: ToolRegistry, ctx: ToolContext, tree: Path) -> None:
    result = tools.run("grep_files", {"pattern": "foo(["}, ctx)
    assert result.startswith("Error: invalid regular expression 'foo([': ")
    bad = tools.run("grep_files", {"pattern": "x", "max_matches": 0}, ctx)
    assert bad.startswith("Error: invalid arguments for grep_files: max_matches: ")


def test_grep_caps_bytes_per_file(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    # A needle past the per-file cap is not found; one before it is.
    filler = "filler\n" * (search_tools.MAX_GREP_BYTES_PER_FILE // 7 + 10)
    (workspace / "big.txt").write_text("early needle\n" + filler + "late needle\n")
    found = tools.run("grep_files", {"pattern": "needle"}, ctx)
    assert "early needle" in found and "late needle" not in found


# -- repo_map ----------------------------------------------------------------------------


def test_repo_map(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    code = workspace / "proj"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "app.py").write_text(
        "import os\n\nclass Server:\n    def start(self):\n        pass\n\n"
        "    async def stop(self):\n        pass\n\n\ndef main():\n    def inner():\n"
        "        pass\n\n\nasync def serve():\n    pass\n"
    )
    (code / "web.ts").write_text(
        "export class Widget {\n  render() {}\n}\n\nexport async function load(url) {}\n"
    )
    (code / "main.go").write_text(
        "package main\n\nfunc (s *Server) Start() error {\n}\n\nfunc main() {\n}\n"
    )
    (code / "lib.rs").write_text("pub struct Point {}\n\npub fn area() -> u32 { 0 }\n")
    (code / "broken.py").write_text("def ok():\n    pass\n\ndef broken(:\n")
    (code / "notes.txt").write_text("def not_code\n")

    result = tools.run("repo_map", {"path": "proj"}, ctx)
    assert result.splitlines() == [
        "broken.py",
        "  (syntax error: invalid syntax)",
        "  1: def ok",
        "  4: def broken",  # a file mid-edit falls back to the patterns
        "lib.rs",
        "  1: struct Point",
        "  3: fn area",
        "main.go",
        "  3: func (s *Server) Start",
        "  6: func main",
        "web.ts",
        "  1: class Widget",
        "  5: function load",
        "pkg/app.py",  # a directory's files come before its subdirectories
        "  3: class Server",
        "    4: def start",
        "    7: def stop",
        "  11: def main",
        "  16: async def serve",
    ]
    capped = tools.run("repo_map", {"path": "proj", "max_files": 1}, ctx)
    assert capped.splitlines()[-1] == "... [stopped at 1 files]"
    assert tools.run("repo_map", {"path": "nope"}, ctx) == "Error: not a directory: nope"
    assert "outside the workspace" in tools.run("repo_map", {"path": "/"}, ctx)


# -- system_info -------------------------------------------------------------------------


def test_system_info_has_facts_and_no_env(
    tools: ToolRegistry, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SECRET_TOKEN", "s3cr3t-value")
    result = tools.run("system_info", {}, ctx)
    keys = [line.split(":", 1)[0] for line in result.splitlines()]
    assert keys == [
        "os", "platform", "cpu_count", "load_average (1/5/15 min)", "memory",
        "workspace_disk", "python",
    ]  # fmt: skip
    assert f"cpu_count: {os.cpu_count()}" in result
    assert "s3cr3t-value" not in result and "SOME_SECRET_TOKEN" not in result
    assert tools.run("system_info", {"x": 1}, ctx).startswith("Error: invalid arguments")
