"""``skill_exec``: a skill's script runs start to finish under exec's guards, with real
processes; paths that leave the skill and skills that cannot run here are refused. And the
whole path through a real ``clawctl agent`` turn with the scripted LLM: the system prompt
offers the available skill only, and the model's ``skill_exec`` call returns the output."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from claw_worker.config import Config
from claw_worker.tools import ToolContext, ToolRegistry, default_tools
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import pid_alive, wait_for
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

MISSING_BIN = "clawfleet-test-no-such-program"


def make_skill(workspace: Path, name: str, scripts: dict[str, tuple[str, int]],
               extra: str = "") -> Path:  # fmt: skip
    path = workspace / "skills" / name
    (path / "scripts").mkdir(parents=True)
    (path / "SKILL.md").write_text(
        f"---\nname: {name}\ndescription: The {name} skill.\n{extra}---\n\nRun the scripts.\n"
    )
    for file, (text, mode) in scripts.items():
        (path / "scripts" / file).write_text(text)
        (path / "scripts" / file).chmod(mode)
    return path


def config(**exec_cfg: object) -> Config:
    return Config.model_validate({"tools": {"exec": {"enabled": True, **exec_cfg}}})


def run(tools: ToolRegistry, ctx: ToolContext, **args: object) -> str:
    return tools.run("skill_exec", args, ctx)


def test_runs_a_script_with_arguments_in_the_skill_directory(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skill = make_skill(workspace, "greet", {
        "hello.sh": ('#!/bin/sh\necho "hello $1 and $2"\npwd\necho "ws=$CLAW_WORKSPACE"\n'
                     'echo "key=${OPENAI_API_KEY:-none}"\nexit 3\n', 0o755),
        "count.py": ("import sys\nprint(len(sys.argv) - 1, sys.argv[1:])\n", 0o644),
    })  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    out = run(tools, ctx, name="greet", script="hello.sh", args=["world", "$(id) `x` ; *"])
    assert out.splitlines() == ["hello world and $(id) `x` ; *", str(skill), f"ws={workspace}",
                                "key=none", "[exit code 3]"]  # fmt: skip
    # Not executable: the extension picks the interpreter.
    assert run(tools, ctx, name="greet", script="count.py", args=["a b", ""]) == "2 ['a b', '']"


def test_refuses_paths_outside_the_skill(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    skill = make_skill(workspace, "paths", {"ok.sh": ("echo ok\n", 0o755)})
    (workspace / "outside.sh").write_text("echo escaped\n")
    (skill / "scripts" / "link.sh").symlink_to(workspace / "outside.sh")
    (skill / "scripts" / "up.sh").symlink_to("../../../outside.sh")
    (skill / "scripts" / "inside.sh").symlink_to("ok.sh")
    (skill / "scripts" / "sub").mkdir()
    for script in ("../SKILL.md", "sub/x.sh", "..", "/bin/sh", "a\\b"):
        out = run(tools, ctx, name="paths", script=script)
        assert out.startswith("Error: invalid arguments for skill_exec: script:"), out
    for script in ("link.sh", "up.sh"):
        assert "leads outside the skill" in run(tools, ctx, name="paths", script=script)
    assert "not a regular file" in run(tools, ctx, name="paths", script="sub")
    missing = run(tools, ctx, name="paths", script="nope.sh")
    assert "no script 'nope.sh'" in missing and "ok.sh" in missing
    assert run(tools, ctx, name="paths", script="inside.sh") == "ok"
    assert "no skill '../paths'" in run(tools, ctx, name="../paths", script="ok.sh")
    unknown = run(tools, ctx, name="nope", script="ok.sh")
    assert "no skill 'nope'" in unknown and "available skills: paths" in unknown


def test_a_wrong_script_name_lists_a_bounded_number_of_scripts(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    """A skill holding 5,000 generated scripts: a wrong name listed every one of them in
    the error the model reads (about 90,000 characters, and errors are not capped)."""
    skill = make_skill(workspace, "many", {"ok.sh": ("echo ok\n", 0o755)})
    for n in range(5000):
        (skill / "scripts" / f"generated-script-{n:05d}.sh").write_text("echo\n")
    out = run(tools, ctx, name="many", script="nope.sh")
    assert "no script 'nope.sh'" in out and "generated-script-00000.sh" in out, out[:200]
    assert len(out) < 3000 and "and 4951 more" in out, out[-200:]


def test_refuses_skills_that_cannot_run_here(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    make_skill(workspace, "needy", {"go.sh": ("echo ran\n", 0o755)},
               f"requires: {{bins: [{MISSING_BIN}]}}\n")  # fmt: skip
    out = run(tools, ctx, name="needy", script="go.sh")
    assert out == f"Error: skill 'needy' cannot run here: unavailable: missing bin {MISSING_BIN}"
    make_skill(workspace, "plain", {"data.txt": ("x\n", 0o644)})
    assert "not executable and no interpreter" in run(tools, ctx, name="plain", script="data.txt")


def test_timeout_kills_the_script_and_everything_it_started(workspace: Path) -> None:
    # On the host: the pid the script writes must be a host pid (under bubblewrap it is the
    # sandbox's; test_exec_lifetime.py covers the sandboxed case).
    tools = default_tools(config(timeout_sec=1, sandbox="none"))
    ctx = ToolContext(
        workspace=workspace, session_key="test:1", config=config(timeout_sec=1, sandbox="none")
    )
    make_skill(workspace, "slow", {
        "slow.sh": ("#!/bin/sh\necho started\nsleep 60 &\necho $! > child.pid\nsleep 60\n", 0o755)
    })  # fmt: skip
    start = time.monotonic()
    out = run(tools, ctx, name="slow", script="slow.sh")
    assert time.monotonic() - start < 10
    assert out.startswith("Error: command timed out after 1s") and "started" in out
    pid = int((workspace / "skills/slow/child.pid").read_text())
    wait_for(lambda: not pid_alive(pid), timeout=5, what="the background sleep to be killed")


def test_deny_patterns_apply_to_the_command_line(
    tools: ToolRegistry, ctx: ToolContext, workspace: Path
) -> None:
    make_skill(workspace, "wipe", {"go.sh": ("echo should not run\n", 0o755)})
    out = run(tools, ctx, name="wipe", script="go.sh", args=["mkfs"])
    assert out.startswith("Error: command refused: it matches the deny pattern")
    too_long = run(tools, ctx, name="wipe", script="go.sh", args=["'" * 4096] * 32)
    assert too_long.startswith("Error: the arguments make a command line over")
    too_many = run(tools, ctx, name="wipe", script="go.sh", args=["a"] * 33)
    assert "args" in too_many and too_many.startswith("Error: invalid arguments")


def test_offered_only_when_exec_is_enabled() -> None:
    assert "skill_exec" in default_tools(config()).names
    off = Config.model_validate({"tools": {"exec": {"enabled": False}}})
    assert "skill_exec" not in default_tools(off).names and "exec" not in default_tools(off).names


def test_a_turn_offers_available_skills_and_runs_one(
    claw_home: ClawHome, llm_server: LLMServer, redis_server: RedisServer
) -> None:
    proxy = {"api_base": llm_server.base_url, "models": ["m"]}
    claw_home.write_config({"providers": {"proxy": proxy}, "redis": {"url": redis_server.url},
                            "tools": {"exec": {"enabled": True}}})  # fmt: skip
    ws = claw_home.workspace
    make_skill(ws, "greet", {"hello.sh": ('#!/bin/sh\necho "GREETING for $1"\n', 0o755)})
    make_skill(ws, "needy", {"go.sh": ("echo ran\n", 0o755)},
               f"requires: {{bins: [{MISSING_BIN}]}}\n")  # fmt: skip
    llm_server.reply_tool_call("skill_exec", {"name": "greet", "script": "hello.sh",
                                              "args": ["Ada"]})  # fmt: skip
    llm_server.reply("greeted")
    result = claw_home.clawctl("agent", "-m", "greet Ada")
    assert result.returncode == 0, result.stderr
    assert "greeted" in result.stdout
    first, second = llm_server.requests
    system = first["messages"][0]["content"]
    assert "- greet: The greet skill." in system and "needy" not in system
    assert "skill_exec" in {t["function"]["name"] for t in first["tools"]}
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["content"] == "GREETING for Ada"
