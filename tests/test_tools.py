"""The built-in tools, run through the registry as the agent runs them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, ToolRegistry, default_tools
from tests.fixtures.procs import pid_alive, wait_for


def make_config(**exec_cfg: object) -> Config:
    return Config.model_validate({"tools": {"exec": exec_cfg}} if exec_cfg else {})


def test_schemas_are_openai_function_tools(tools: ToolRegistry) -> None:
    by_name = {s["function"]["name"]: s for s in tools.schemas()}
    # Other tool families (memory) register here too; this is the set this suite owns.
    assert set(by_name) >= {
        "read_file", "write_file", "edit_file", "list_files", "find_files", "grep_files",
        "repo_map", "web_search", "web_fetch", "system_info", "message", "exec",
    }  # fmt: skip
    params = by_name["write_file"]["function"]["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["path", "content"]
    assert params["additionalProperties"] is False
    assert "title" not in params


def test_write_then_read_and_list(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    result = tools.run("write_file", json.dumps({"path": "notes/a.txt", "content": "héllo"}), ctx)
    assert result.startswith("Wrote 6 bytes to notes/a.txt")
    assert (workspace / "notes" / "a.txt").read_text() == "héllo"
    assert tools.run("read_file", {"path": "notes/a.txt"}, ctx) == "héllo"
    assert tools.run("list_files", {}, ctx) == "notes/"
    assert tools.run("list_files", {"recursive": True}, ctx) == "notes/\nnotes/a.txt"
    assert not [p for p in (workspace / "notes").iterdir() if p.name.endswith(".tmp")]


def test_write_replaces_atomically(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    target = workspace / "a.txt"
    target.write_text("old")
    inode_before = target.stat().st_ino
    tools.run("write_file", {"path": "a.txt", "content": "new"}, ctx)
    assert target.read_text() == "new"
    assert target.stat().st_ino != inode_before  # a new file renamed over the old one


def test_read_missing_file(tools: ToolRegistry, ctx: ToolContext) -> None:
    assert tools.run("read_file", {"path": "nope.txt"}, ctx) == "Error: file not found: nope.txt"


def test_read_is_capped(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    (workspace / "big.txt").write_text("x" * 50_000)
    result = tools.run("read_file", {"path": "big.txt"}, ctx)
    assert len(result) < 17_000
    assert "[truncated: 34000 more characters]" in result


@pytest.mark.parametrize(
    "path", ["../outside.txt", "sub/../../outside.txt", "/etc/passwd", "link/secret.txt"]
)
def test_workspace_escape_refused(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path, path: str
) -> None:
    outside = workspace.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("secret")
    (workspace / "link").symlink_to(outside)
    for name in ("read_file", "write_file"):
        result = tools.run(
            name, {"path": path, "content": "x"} if name == "write_file" else {"path": path}, ctx
        )
        assert result.startswith("Error:") and "outside the workspace" in result, result
    assert not (workspace.parent / "outside.txt").exists()
    assert (outside / "secret.txt").read_text() == "secret"


def test_symlink_file_escape_refused(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    secret = workspace.parent / "secret.txt"
    secret.write_text("secret")
    (workspace / "innocent.txt").symlink_to(secret)
    assert "outside the workspace" in tools.run("read_file", {"path": "innocent.txt"}, ctx)
    assert "outside the workspace" in tools.run(
        "write_file", {"path": "innocent.txt", "content": "x"}, ctx
    )
    assert secret.read_text() == "secret"


def test_bad_arguments_name_the_field(tools: ToolRegistry, ctx: ToolContext) -> None:
    missing = tools.run("write_file", {"path": "a.txt"}, ctx)
    assert missing == "Error: invalid arguments for write_file: content: Field required"
    wrong_type = tools.run("write_file", {"path": "a.txt", "content": 5}, ctx)
    assert wrong_type.startswith("Error: invalid arguments for write_file: content: ")
    assert "string" in wrong_type
    extra = tools.run("read_file", {"path": "a", "mode": "r"}, ctx)
    assert extra == "Error: invalid arguments for read_file: mode: Extra inputs are not permitted"


def test_unparseable_arguments(tools: ToolRegistry, ctx: ToolContext) -> None:
    bad_json = tools.run("read_file", '{"path": "a.txt"', ctx)
    assert bad_json.startswith(
        "Error: invalid arguments for read_file: arguments are not valid JSON"
    )
    not_object = tools.run("read_file", "[1, 2]", ctx)
    assert not_object == (
        "Error: invalid arguments for read_file: arguments must be a JSON object, got list"
    )


def test_unknown_tool(tools: ToolRegistry, ctx: ToolContext) -> None:
    result = tools.run("fly", {}, ctx)
    assert result.startswith("Error: unknown tool 'fly'; available tools: ")
    assert "edit_file, exec, " in result and "read_file" in result


def test_exec_runs_in_workspace(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    result = tools.run("exec", {"command": "pwd; echo out; echo err >&2"}, ctx)
    assert result.splitlines() == [str(workspace.resolve()), "out", "err"]
    failed = tools.run("exec", {"command": "echo nope; exit 3"}, ctx)
    assert failed == "nope\n[exit code 3]"
    assert tools.run("exec", {"command": "true"}, ctx) == "(no output)"


def test_exec_strips_secrets(
    tools: ToolRegistry, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAW_API_KEY", "sk-claw")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp")
    monkeypatch.setenv("my_db_password", "pw")
    monkeypatch.setenv("HARMLESS_SETTING", "visible")
    result = tools.run("exec", {"command": "env"}, ctx)
    assert "HARMLESS_SETTING=visible" in result
    for secret in ("sk-claw", "sk-openai", "ghp", "=pw"):
        assert secret not in result


def test_exec_timeout_kills_the_process_group(workspace: Path) -> None:
    # On the host: the pid the command writes must be a host pid (test_exec_lifetime.py
    # covers the same under bubblewrap).
    ctx = ToolContext(workspace, "test:1", make_config(timeout_sec=1, sandbox="none"))
    tools = default_tools(ctx.config)
    # The shell starts a background child that would outlive a kill of the shell alone.
    started = time.monotonic()
    result = tools.run("exec", {"command": "sleep 60 & echo $! > child.pid; wait"}, ctx)
    elapsed = time.monotonic() - started
    assert result.startswith("Error: command timed out after 1s; its process group was killed")
    assert elapsed < 10
    child = int(wait_for(lambda: (workspace / "child.pid").read_text().strip(), what="pid file"))
    wait_for(lambda: not pid_alive(child), timeout=5, what="the background child to die")


def test_exec_output_cap(workspace: Path) -> None:
    ctx = ToolContext(workspace, "test:1", make_config(max_output_chars=1000))
    result = default_tools(ctx.config).run(
        "exec", {"command": "yes abcdefgh | head -c 500000"}, ctx
    )
    assert result.startswith("abcdefgh\nabcdefgh\n")
    assert "[output truncated at 1000 characters; 500000 bytes in all]" in result
    assert len(result) < 1200


def test_exec_deny_pattern(tools: ToolRegistry, ctx: ToolContext, workspace: Path) -> None:
    result = tools.run("exec", {"command": "rm -rf / "}, ctx)
    assert result.startswith("Error: command refused: it matches the deny pattern")
    assert "tools.exec.deny_patterns" in result
    assert tools.run("exec", {"command": "sudo SHUTDOWN now"}, ctx).startswith(
        "Error: command refused"
    )
    assert workspace.exists()


def test_exec_cancel_kills(workspace: Path) -> None:
    deadline = time.monotonic() + 0.5
    ctx = ToolContext(  # on the host: bwrap's start-up alone may take 0.5 s on a busy machine
        workspace,
        "t:1",
        make_config(sandbox="none"),
        should_stop=lambda: time.monotonic() > deadline,
    )
    started = time.monotonic()
    result = default_tools(ctx.config).run("exec", {"command": "echo begun; sleep 30"}, ctx)
    assert result.startswith("Error: command cancelled")
    assert "begun" in result
    assert time.monotonic() - started < 10


def test_exec_disabled_in_config() -> None:
    config = Config.model_validate({"tools": {"exec": {"enabled": False}}})
    assert "exec" not in default_tools(config)


def test_registry_refuses_duplicate_names() -> None:
    registry = default_tools(make_config())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.get("exec"))  # type: ignore[arg-type]


def test_exec_never_sees_the_fleets_credentials(
    tools: ToolRegistry, ctx: ToolContext, monkeypatch
) -> None:
    """Names that say credential, the fleet's own settings, and any URL carrying a password
    (the Redis URL in a container) are left out of a command's environment."""
    monkeypatch.setenv("CLAW_REDIS_URL", "redis://:redis-pw-1@redis:6379/0")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:flower-pw-2")
    monkeypatch.setenv("BACKUP_TARGET", "s3://user:s3-pw-3@bucket/path")
    monkeypatch.setenv("PLAIN_SETTING", "https://example.com/ok")
    out = tools.run("exec", {"command": "env"}, ctx)
    for secret in ("redis-pw-1", "flower-pw-2", "s3-pw-3"):
        assert secret not in out
    assert "PLAIN_SETTING=https://example.com/ok" in out
