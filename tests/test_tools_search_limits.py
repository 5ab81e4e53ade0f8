"""Hostile input to the search and file tools: one call must not freeze a worker.

Patterns run on RE2 (linear time), every walk has a wall-clock limit, and symlink loops and
FIFOs in the workspace are skipped. The fleet tests run the bad call in a real worker while
another session's message goes through it, and /stop ends a long search.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, ToolRegistry, default_tools
from tests.fixtures.procs import wait_for

CATASTROPHIC = "(a+)+$"  # backtracks ~2^n steps on n a's and a '!' in Python's re
DEEP = "/".join(["d"] * 6)


def timed(tools: ToolRegistry, name: str, args: dict, ctx: ToolContext) -> tuple[str, float]:
    started = time.monotonic()
    result = tools.run(name, args, ctx)
    return result, time.monotonic() - started


def search_ctx(workspace: Path, timeout: float, **kwargs: object) -> ToolContext:
    config = Config.model_validate({"tools": {"search_timeout_sec": timeout}})
    return ToolContext(workspace, "t:1", config, **kwargs)  # type: ignore[arg-type]


def test_catastrophic_regex_returns_quickly(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    # With Python's re each of these lines takes ~15 s; RE2 takes microseconds.
    (workspace / "a.txt").write_text(("a" * 28 + "!\n") * 3 + "aaa\n")
    result, took = timed(tools, "grep_files", {"pattern": CATASTROPHIC}, ctx)
    assert result == "a.txt:4: aaa"
    assert took < 5, f"grep took {took:.1f}s"


@pytest.mark.parametrize(
    ("pattern", "feature"),
    [(r"(a)\1", "backreferences"), (r"foo(?=bar)", "lookahead"), (r"(?<!x)y", "lookbehind"),
     (r"a++", "possessive"), (r"(?>a)", "atomic")],
)  # fmt: skip
def test_unsupported_regex_features_get_a_clear_error(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path, pattern: str, feature: str
) -> None:
    (workspace / "a.txt").write_text("foobar\n")
    result = tools.run("grep_files", {"pattern": pattern}, ctx)
    assert result.startswith(f"Error: invalid regular expression {pattern!r}: "), result
    assert "RE2 syntax" in result and feature in result


def test_pattern_length_is_validated(tools: ToolRegistry, ctx: ToolContext) -> None:
    result = tools.run("grep_files", {"pattern": "a" * 1001}, ctx)
    assert result.startswith("Error: invalid arguments for grep_files: pattern: String should")
    huge = tools.run("grep_files", {"pattern": "a{1000}{1000}"}, ctx)
    assert huge.startswith("Error: invalid regular expression"), huge


@pytest.mark.parametrize("pattern", ["**/" * 50 + "*.py", "**/d/" * 6 + "*.py"])
def test_repeated_globstar_glob_is_fast(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path, pattern: str
) -> None:
    deep = workspace / DEEP
    deep.mkdir(parents=True)
    for name in ("x1.txt", "x2.txt", "x3.txt", "keep.py"):
        (deep / name).write_text("x\n")
    (workspace / "top.py").write_text("x\n")
    result, took = timed(tools, "find_files", {"pattern": pattern}, ctx)
    expected = f"top.py\n{DEEP}/keep.py" if pattern.startswith("**/**") else f"{DEEP}/keep.py"
    assert result == expected
    assert took < 5, f"find_files took {took:.1f}s"
    grep, took = timed(tools, "grep_files", {"pattern": "x", "glob": pattern}, ctx)
    assert grep.splitlines() == [f"{path}:1: x" for path in expected.splitlines()]
    assert took < 5, f"grep_files took {took:.1f}s"


def test_symlink_loops_are_skipped_and_reported(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "src").mkdir()
    (workspace / "src" / "ok.py").write_text("needle\n")
    (workspace / "loop").symlink_to("loop")
    (workspace / "src" / "ping").symlink_to("pong")
    (workspace / "src" / "pong").symlink_to("ping")
    (workspace / "self").symlink_to(".")  # a directory link: never entered
    note = "... [skipped 3 symlink loop(s): loop, src/ping, src/pong]"
    assert tools.run("find_files", {"pattern": "*"}, ctx) == f"src/ok.py\n{note}"
    assert tools.run("grep_files", {"pattern": "needle"}, ctx) == f"src/ok.py:1: needle\n{note}"
    listing = tools.run("list_files", {"recursive": True}, ctx).splitlines()
    assert listing == ["self/", "src/", "src/ok.py", note]
    repo = tools.run("repo_map", {}, ctx).splitlines()
    assert repo[0] == "src/ok.py" and repo[-1] == note.removeprefix("... ")
    loop = tools.run("read_file", {"path": "loop"}, ctx)
    assert loop == "Error: path 'loop' is or goes through a symlink loop"
    assert "symlink loop" in tools.run("list_files", {"path": "loop"}, ctx)


def test_a_fifo_does_not_block_a_search(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "a.py").write_text("def needle():\n    pass\n")
    fifo = workspace / "b.py"
    os.mkfifo(fifo)
    results: dict[str, str] = {}

    def run_all() -> None:
        results["grep"] = tools.run("grep_files", {"pattern": "needle"}, ctx)
        results["repo_map"] = tools.run("repo_map", {}, ctx)
        results["read"] = tools.run("read_file", {"path": "b.py"}, ctx)

    worker = threading.Thread(target=run_all, daemon=True)
    worker.start()
    try:
        worker.join(timeout=15)
        assert not worker.is_alive(), "a tool blocked on the FIFO"
    finally:  # release a reader blocked in open(), if any
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert results == {
        "grep": "a.py:1: def needle():",
        "repo_map": "a.py\n  1: def needle",
        "read": "Error: not a file: b.py",
    }


def test_the_time_limit_reports_partial_results(workspace: Path) -> None:
    # ~0.4 s of matching per file; the limit stops the search long before the end.
    for index in range(10):
        (workspace / f"f{index:02}.txt").write_text("needle\n" + "x\n" * 500_000)
    ctx = search_ctx(workspace, 0.3)
    tools = default_tools(ctx.config)
    result, took = timed(tools, "grep_files", {"pattern": "needle"}, ctx)
    lines = result.splitlines()
    assert lines[0] == "f00.txt:1: needle"
    assert lines[-1] == "... [stopped after 0.3 s: results are partial]"
    assert len(lines) < 11
    assert took < 5, f"grep took {took:.1f}s"


def test_a_stop_request_ends_a_search(workspace: Path) -> None:
    for index in range(10):
        (workspace / f"f{index:02}.txt").write_text("x\n" * 500_000)
    stop_at = time.monotonic() + 0.3
    ctx = search_ctx(workspace, 60, should_stop=lambda: time.monotonic() > stop_at)
    result, took = timed(default_tools(ctx.config), "grep_files", {"pattern": "needle"}, ctx)
    assert result.startswith("No matches for 'needle' in ")
    assert result.endswith("[stopped because the run was cancelled: results are partial]")
    assert took < 5, f"grep took {took:.1f}s"


# -- through a real fleet -------------------------------------------------------------------


def status_of(http, message_id: str) -> dict:
    return http.get(f"/api/messages/{message_id}").json()


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        # Under d/: the worker fills the workspace's templates in at start (AGENTS.md...).
        (
            "grep_files",
            {"pattern": CATASTROPHIC, "path": "d"},
            "No matches for '(a+)+$' in 2 files",
        ),
        ("find_files", {"pattern": "**/" * 50 + "*.py"}, "/".join(["d"] * 12) + "/keep.py"),
    ],
)
def test_a_hostile_search_does_not_hold_up_other_sessions(
    fleet_factory, llm_server, claw_home, tool: str, args: dict, expected: str
) -> None:
    deep = claw_home.workspace / "/".join(["d"] * 12)
    deep.mkdir(parents=True)
    # Python's re would take hours on either: 2^40 steps, or 50 nested optional groups.
    (deep / "keep.py").write_text("x = 1\n")
    (deep / "lines.txt").write_text(("a" * 40 + "!\n") * 5)
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    llm_server.reply_tool_call(tool, args, when="bad-search")
    llm_server.reply("search finished", when="bad-search")
    with fleet.client() as http:
        bad = http.post("/api/message", json={"text": "bad-search", "session": "api:bad"}).json()
        wait_for(lambda: llm_server.requests_for("bad-search"), timeout=30, what="the tool call")
        asked = time.monotonic()
        other = http.post(
            "/api/message", json={"text": "other-session", "session": "api:other", "wait": True}
        )
        took = time.monotonic() - asked
        assert other.json()["reply"] == "echo: other-session"
        assert took < 10, f"the other session waited {took:.1f}s"
        done = wait_for(
            lambda: (r := status_of(http, bad["message_id"]))["status"] == "done" and r,
            timeout=20, what="the hostile search to finish",
        )  # fmt: skip
    assert done["reply"] == "search finished"
    tool_result = llm_server.requests_for("bad-search")[-1]["messages"][-1]
    assert tool_result["role"] == "tool" and tool_result["content"] == expected


def test_stop_ends_a_long_search_promptly(fleet_factory, llm_server, claw_home) -> None:
    workspace = claw_home.workspace
    workspace.mkdir(parents=True)
    # A long but legitimate search (~0.4 s a file); the first line would freeze Python's re.
    (workspace / "f00.txt").write_text("a" * 40 + "!\n")
    for index in range(1, 25):
        (workspace / f"f{index:02}.txt").write_text("x\n" * 500_000)
    fleet = fleet_factory(tools__search_timeout_sec=120)
    fleet.start_ingress()
    fleet.start_worker()
    llm_server.reply_tool_call("grep_files", {"pattern": CATASTROPHIC}, when="long-search")
    with fleet.client() as http:
        msg = http.post("/api/message", json={"text": "long-search", "session": "api:s"}).json()
        wait_for(lambda: llm_server.requests_for("long-search"), timeout=30, what="the tool call")
        asked = time.monotonic()
        assert http.post("/api/sessions/api:s/stop").json()["status"] == "stop_requested"
        wait_for(lambda: status_of(http, msg["message_id"])["status"] == "cancelled",
                 timeout=30, what="the run to be cancelled")  # fmt: skip
        took = time.monotonic() - asked
        assert took < 5, f"stop took {took:.1f}s"
        after = http.post("/api/message", json={"text": "hello", "session": "api:s", "wait": True})
        assert after.json()["reply"] == "echo: hello"
