"""``exec`` ends when it should: at its deadline, on /stop, and when the command exits,
whatever the processes it started do (setsid, nohup, a cleared environment, a held pipe);
none of them outlives the call. Each runs with the sandbox off and under bubblewrap.

A command's processes are found by their working directory (each test's own workspace),
not by the pid they write: under bubblewrap that pid is one of the sandbox's namespace."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, default_tools
from tests.fixtures.procs import processes_in, wait_for

# A detached child that writes its pid when it is up and sleeps long in the workspace.
DETACHED = "setsid sh -c 'echo $$ > child.pid; exec sleep 335'"
WAIT_FOR_PID = "while [ ! -s child.pid ]; do sleep 0.01; done"


@pytest.fixture(params=["none", "bwrap"])
def sandbox(request: pytest.FixtureRequest) -> str:
    if request.param == "bwrap" and not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    return request.param


@pytest.fixture
def child_pid(workspace: Path) -> Iterator[Path]:
    """The pid file the commands write; whatever still runs in the workspace is killed
    after the test."""
    yield workspace / "child.pid"
    for pid in processes_in(workspace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def exec_ctx(workspace: Path, sandbox: str, timeout: int = 60, **kwargs: object) -> ToolContext:
    config = Config.model_validate(
        {"tools": {"exec": {"timeout_sec": timeout, "sandbox": sandbox}}}
    )
    return ToolContext(workspace, "t:1", config, **kwargs)  # type: ignore[arg-type]


def run(ctx: ToolContext, command: str) -> tuple[str, float]:
    started = time.monotonic()
    result = default_tools(ctx.config).run("exec", {"command": command}, ctx)
    return result, time.monotonic() - started


def assert_dies(pid_file: Path) -> None:
    wait_for(lambda: pid_file.read_text().strip(), timeout=5, what="the pid file")
    workspace = pid_file.parent
    wait_for(lambda: not processes_in(workspace), timeout=10, what="the child to be killed")


def test_timeout_ends_the_call_while_a_detached_child_holds_the_pipe(
    workspace: Path, child_pid: Path, sandbox: str
) -> None:
    result, took = run(exec_ctx(workspace, sandbox, timeout=2), f"{DETACHED} & sleep 60")
    assert result.startswith("Error: command timed out after 2s; its process group was killed")
    assert took < 2 + 8, f"the call took {took:.1f}s"
    assert_dies(child_pid)


@pytest.mark.parametrize(
    "command",
    [
        # Detached, its output elsewhere: the shell exits at once.
        f"nohup {DETACHED} > /dev/null 2>&1 & {WAIT_FOR_PID}",
        # Detached and holding the output pipe after the shell exited.
        f"{DETACHED} & {WAIT_FOR_PID}",
        # Detached with an empty environment (no CLAW_EXEC_ID to find it by).
        'env -i /bin/sh -c "' + DETACHED.replace("$", "\\$") + f' &"; {WAIT_FOR_PID}',
    ],
    ids=["nohup-setsid", "holds-the-pipe", "empty-env"],
)
def test_leftovers_are_killed_when_the_command_ends(
    workspace: Path, child_pid: Path, command: str, sandbox: str
) -> None:
    result, took = run(exec_ctx(workspace, sandbox, timeout=20), command + "; echo done")
    assert result == "done\n[1 background process(es) still running when it ended were killed]"
    assert took < 10, f"the call took {took:.1f}s"
    assert_dies(child_pid)


def test_background_jobs_waited_for_are_not_leftovers(workspace: Path, sandbox: str) -> None:
    result, _ = run(exec_ctx(workspace, sandbox), "(sleep 0.2; echo late) & wait; echo done")
    assert result == "late\ndone"


def test_a_stop_ends_a_call_whose_child_is_detached(
    workspace: Path, child_pid: Path, sandbox: str
) -> None:
    ctx = exec_ctx(workspace, sandbox, should_stop=child_pid.exists)
    result, took = run(ctx, f"echo begun; {DETACHED} & sleep 120")
    assert result.startswith("Error: command cancelled (stop requested)")
    assert "begun" in result
    assert took < 10, f"the call took {took:.1f}s"
    assert_dies(child_pid)


def test_a_long_command_is_checked_against_the_deny_patterns_quickly(
    workspace: Path, sandbox: str
) -> None:
    # "rm -rrr...": the default rm pattern backtracks quadratically in Python's re (~35 s).
    result, took = run(exec_ctx(workspace, sandbox), "echo rm -" + "r" * 60_000 + " | wc -c")
    assert result == "60005"
    assert took < 5, f"the call took {took:.1f}s"


def test_command_is_validated(workspace: Path, sandbox: str) -> None:
    tools = default_tools(Config())
    ctx = exec_ctx(workspace, sandbox)
    nul = tools.run("exec", {"command": "echo a\0b"}, ctx)
    assert nul == (
        "Error: invalid arguments for exec: command: Value error, the command must not "
        "contain NUL characters"
    )
    huge = tools.run("exec", {"command": "echo " + "x" * 200_000}, ctx)
    assert huge.startswith("Error: invalid arguments for exec: command: Value error, the command")
    assert "write_file" in huge


# -- through a real fleet -------------------------------------------------------------------


def test_stop_kills_a_detached_child_through_the_fleet(
    fleet_factory, llm_server, claw_home
) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    fleet.start_worker()
    llm_server.reply_tool_call("exec", {"command": f"{DETACHED} & sleep 120"}, when="detach")
    pid_file = claw_home.workspace / "child.pid"
    try:
        with fleet.client() as http:
            msg = http.post("/api/message", json={"text": "detach", "session": "api:d"}).json()
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                     timeout=30, what="the detached child")  # fmt: skip
            asked = time.monotonic()
            resp = http.post("/api/message", json={"text": "/stop", "session": "api:d"})
            assert resp.json()["reply"] == "Stopping the current reply."
            wait_for(lambda: http.get(f"/api/messages/{msg['message_id']}").json()["status"]
                     == "cancelled", timeout=30, what="the run to be cancelled")  # fmt: skip
            took = time.monotonic() - asked
            assert took < 5, f"stop took {took:.1f}s"
            wait_for(lambda: not processes_in(claw_home.workspace), timeout=10,
                     what="the detached child to die")  # fmt: skip
            after = http.post("/api/message", json={"text": "hi", "session": "api:d", "wait": True})
            assert after.json()["reply"] == "echo: hi"
    finally:
        for pid in processes_in(claw_home.workspace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
