"""The exec deny list reads through trivial rewrites (claw_worker/tools/shell_guard.py), and
refuses them through the real exec tool without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from claw_worker.config.schema import Config, ExecToolConfig
from claw_worker.tools import ToolContext, default_tools
from claw_worker.tools.shell_guard import (
    CommandDenied,
    canonical_commands,
    check_command,
    fork_bomb,
)
from tests.campaign import record

DEFAULT_PATTERNS = ExecToolConfig().deny_patterns

# Each is a destructive command the default deny_patterns name, rewritten.
REWRITES = [
    "rm -rf /",
    "rm -r -f /",
    "rm -f -r /",
    "rm -R -f /",
    "rm --recursive --force /",
    "rm -r --force /",
    "rm  -r    -f   /",
    "rm\t-r\t-f\t/",
    "rm -rf //",
    "rm -rf /*",
    "rm -rf /./",
    "rm -rf -- /",
    "rm -r -f --no-preserve-root /",
    'r"m" -rf /',
    "'rm' '-rf' '/'",
    "r\\m -r\\f /",
    "\\rm -rf /",
    "/bin/rm -rf /",
    "sudo rm -rf /",
    "env X=1 rm -r -f /",
    "rm${IFS}-rf${IFS}/",
    "rm$IFS-r$IFS-f$IFS/",
    "rm$@ -rf /",
    "r$1m -rf /",
    "echo hi; rm -r -f /",
    "true && rm -r -f /*",
    "sh -c 'rm -r -f /'",
    'bash -c "rm --recursive --force //"',
    "eval 'rm -r -f /'",
    "m\\kfs.ext4 /dev/sda1",
    'mk"fs" /dev/sda1',
    'd""d if=/dev/zero of=/dev/sda',
    "sudo shut\\down -h now",
    "r'e'boot",
]
FORK_BOMBS = [
    ":(){ :|:& };:",
    ":(){ :|: & };:",
    "bomb(){ bomb|bomb & }; bomb",
    "bomb() { bomb | bomb & } ; bomb",
    "f(){ f & f & }; f",
    "function f { f | f & }; f",
    "function boom() { boom & boom; }; boom",
    "x() ( x | x & ); x",
    "sh -c 'b(){ b|b& };b'",
]
HARMLESS = [
    "rm -rf ./build",
    "rm -rf /tmp/scratch",
    "rm -r -f build/ dist/",
    "ls -la /",
    "echo 'rm -rf is dangerous'",
    "git log --oneline | head -5",
    "f(){ echo $1; }; f a; f b",
    'retry(){ "$@" || retry "$@"; }; retry true',
    "python3 -m pytest -q",
    "find / -maxdepth 1 -name etc",
]


@pytest.mark.parametrize("command", REWRITES)
def test_rewrites_of_a_denied_command_are_refused(command: str) -> None:
    with pytest.raises(CommandDenied, match="deny pattern"):
        check_command(command, DEFAULT_PATTERNS)


@pytest.mark.parametrize("command", FORK_BOMBS)
def test_fork_bombs_written_as_any_function_are_refused(command: str) -> None:
    with pytest.raises(CommandDenied, match="calls itself twice in the background"):
        check_command(command, [])


@pytest.mark.parametrize("command", HARMLESS)
def test_ordinary_commands_pass(command: str) -> None:
    check_command(command, DEFAULT_PATTERNS)


def test_canonical_form_merges_flags_and_root_spellings() -> None:
    import shlex

    tokens = shlex.split("rm --force -r -- //*")
    assert canonical_commands(tokens) == ["rm -fr /"]
    assert fork_bomb(["g", "(", ")", "{", "echo", "g", "}"]) is None


def test_an_unclosed_quote_is_still_read(tmp_path: Path) -> None:
    with pytest.raises(CommandDenied):
        check_command("rm -r -f / 'oops", DEFAULT_PATTERNS)


def test_the_exec_tool_refuses_every_rewrite_without_running_it(workspace: Path) -> None:
    """Through the registry: each refusal is a tool error naming the rule; nothing ran (a
    marker each command would write stays absent)."""
    ctx = ToolContext(workspace, "t:1", Config())
    tools = default_tools(ctx.config)
    tried = rejected = escapes = server_errors = 0
    for command in REWRITES + FORK_BOMBS:
        tried += 1
        result = tools.run("exec", {"command": f"touch ran; {command}"}, ctx)
        if result.startswith("Error: command refused:"):
            rejected += 1
        if (workspace / "ran").exists():
            escapes += 1
        if result.startswith("Error: exec failed:"):  # the registry's catch-all for a bug
            server_errors += 1
    record("exec: deny-list rewrites", tried=tried, rejected=rejected, escapes=escapes,
           server_errors=server_errors)  # fmt: skip
    assert (escapes, server_errors) == (0, 0)
    assert rejected == tried
