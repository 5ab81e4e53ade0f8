"""The ``exec`` tool: one shell command in the workspace, with a deadline and a clean env.

Nothing the command starts outlives the call. The shell runs under a small reaper
(``_reaper.py``, run with ``python -I -S``) that makes itself a child subreaper, so every
process the command starts stays its descendant even after ``setsid``, ``nohup`` or a
double fork. When the
shell exits, at the deadline, on /stop, or when the worker thread that started it is gone
(PR_SET_PDEATHSIG), the reaper kills them all and exits only once none is left: background
jobs end with the command (a command meant to keep running belongs in a service, not here).

The worker reads the output pipe itself, in short ``poll`` steps, so a process holding the
pipe open cannot keep the call past its deadline. If the reaper itself cannot be ended, every
process whose environment carries the call's ``CLAW_EXEC_ID`` is killed instead (a process
that cleared its environment escapes only this last resort). The child never sees the
worker's secrets.

Isolation (``tools.exec.sandbox``, ``sandbox.py``): under bubblewrap when it is there, the
command has its own PID namespace, no network, the system read-only and CLAW_HOME hidden.
Always, its processes run under resource limits (``exec_limits.py``) and the command line
passes the deny list (``shell_guard.py``) first.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import Field, field_validator

from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.exec_limits import DiskGuard, limits_for, pids_cgroup
from claw_worker.tools.sandbox import REAPER_SCRIPT, sandbox_prefix
from claw_worker.tools.shell_guard import CommandDenied, check_command
from claw_worker.workspace import make_workspace

# The fleet's own settings (the Redis URL carries its password; CLAW_* name the config and
# home the command has no business with) never reach a command.
SECRET_ENV_NAMES = frozenset({"CLAW_API_KEY", "OPENAI_API_KEY", "CLAW_REDIS_URL", "CLAW_CONFIG"})
SECRET_ENV_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "BASIC_AUTH")
EXEC_ID_ENV = "CLAW_EXEC_ID"
SHELL = "/bin/sh"
MAX_COMMAND_BYTES = 128 * 1024 - 1  # Linux's limit for one argument (MAX_ARG_STRLEN)
_POLL_SEC = 0.05
_DRAIN_SEC = 1.0  # reading on after the reaper exited, if something else holds the pipe
_END_GRACE_SEC = 3.0  # for the reaper to kill the command's processes and exit

# Run as a script with the worker's pid, the command and a pipe to report on (see its doc).
REAPER = REAPER_SCRIPT


def child_env() -> dict[str, str]:
    """The worker's environment without anything that looks like a credential: names that
    say so, and any value that is a URL with a password in it (redis://:pw@host...)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in SECRET_ENV_NAMES
        and not any(marker in name.upper() for marker in SECRET_ENV_MARKERS)
        and not _URL_WITH_PASSWORD.search(value)
    }


_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^@\s/]+@", re.IGNORECASE)


class ExecParams(ToolParams):
    command: str = Field(min_length=1, description="Shell command, run with /bin/sh -c.")
    timeout_sec: int | None = Field(
        None, ge=1, description="Seconds before it is killed (capped by the configured limit)."
    )

    @field_validator("command")
    @classmethod
    def _check_command(cls, command: str) -> str:
        if "\0" in command:
            raise ValueError("the command must not contain NUL characters")
        size = len(command.encode("utf-8", "surrogatepass"))
        if size > MAX_COMMAND_BYTES:
            raise ValueError(
                f"the command is {size} bytes, more than the {MAX_COMMAND_BYTES} a shell "
                "argument can hold; write long content with write_file and run that"
            )
        return command


class _Output:
    """Keeps at most ``limit`` bytes of the output but counts all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]


class ExecTool(Tool[ExecParams]):
    name = "exec"
    description = (
        "Run a shell command in the workspace directory and return its combined stdout and "
        "stderr with the exit code. Processes it leaves running in the background are "
        "killed when it ends. Where a sandbox is available, only the workspace is writable "
        "and there is no network unless the operator allows it (tools.exec.allow_network)."
    )
    Params = ExecParams

    def execute(self, params: ExecParams, ctx: ToolContext) -> str:
        cfg = ctx.config.tools.exec
        check_denied(params.command, cfg.deny_patterns)
        timeout = min(params.timeout_sec or cfg.timeout_sec, cfg.timeout_sec)
        make_workspace(ctx.workspace)
        return run_guarded(params.command, ctx.workspace, timeout, cfg.max_output_chars, ctx)


def check_denied(command: str, patterns: Sequence[str]) -> None:
    """Refuse (``ToolError``) a fork bomb or a command line that matches one of
    ``tools.exec.deny_patterns`` in any of its normalised forms (``shell_guard.py``)."""
    try:
        check_command(command, patterns)
    except CommandDenied as exc:
        raise ToolError(str(exc)) from None


def run_guarded(
    command: str, cwd: Path, timeout: int, max_output_chars: int, ctx: ToolContext,
    env: Mapping[str, str] | None = None,
) -> str:  # fmt: skip
    """Run ``command`` with ``/bin/sh -c`` in ``cwd`` under the reaper, in the sandbox and
    with the resource limits of ``tools.exec``, with the clean environment (plus ``env``),
    the deadline, /stop and the output cap: the whole output with the exit code, or a
    ``ToolError`` for a timeout, a stop or a sandbox that cannot be had. Shared by ``exec``
    and ``skill_exec``."""
    cfg = ctx.config.tools.exec
    disk = DiskGuard(cwd, cfg.min_free_disk_mb)
    if disk.low():
        raise ToolError(f"command not run: {disk.describe()}; free some space first")
    token = uuid.uuid4().hex
    command_env = {**child_env(), **(env or {}), EXEC_ID_ENV: token}
    sandbox = sandbox_prefix(cwd, ctx.workspace, command_env, cfg)
    with pids_cgroup(token, cfg.max_processes) as cgroup_procs:
        return _run(command, sandbox, cwd, command_env, token, timeout, max_output_chars,
                    ctx, limits_for(cfg).as_argument(), str(cgroup_procs or ""), disk)  # fmt: skip


def _run(
    command: str, sandbox: list[str] | None, cwd: Path, env: dict[str, str], token: str,
    timeout: int, max_output_chars: int, ctx: ToolContext, limits: str, cgroup_procs: str,
    disk: DiskGuard,
) -> str:  # fmt: skip
    report, report_w = os.pipe()
    reaper = [sys.executable or "python3", "-I", "-S", str(REAPER)]
    shell = [SHELL, "-c", command]
    if sandbox is None:
        argv = [*reaper, str(os.getpid()), str(report_w), limits, cgroup_procs, *shell]
    else:  # a second reaper inside the sandbox counts the leftovers (see _reaper.py)
        argv = [*reaper, str(os.getpid()), "-1", limits, cgroup_procs, *sandbox,
                *reaper, "0", str(report_w), "", "", *shell]  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(report_w,),
        )  # fmt: skip
    except OSError as exc:
        os.close(report)
        raise ToolError(f"could not start the command: {exc.strerror or exc}") from exc
    finally:
        os.close(report_w)
    # UTF-8 takes up to 4 bytes a character; the character cap is applied after decoding.
    output = _Output(max_output_chars * 4)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + timeout
        outcome = _follow(proc, proc.stdout.fileno(), output, deadline, ctx, disk)
    finally:
        if proc.poll() is None:
            _end(proc, token)
        elif proc.returncode < 0:  # the reaper was killed: it could not clean up
            _kill_marked(token)
        proc.stdout.close()
        killed = _read_report(report)
    if outcome == "disk":
        raise ToolError(f"command stopped: {disk.describe()}; every process it started was "
                        f"killed. Output so far:\n{_shown(output, max_output_chars)}")  # fmt: skip
    body = _format(proc, output, outcome, timeout, max_output_chars)
    if killed:
        body += f"\n[{killed} background process(es) still running when it ended were killed]"
    return body


def _follow(
    proc: subprocess.Popen[bytes], fd: int, output: _Output, deadline: float, ctx: ToolContext,
    disk: DiskGuard,
) -> str:  # fmt: skip
    """Read the output until the reaper exits: "exited", "timeout", "cancelled" or "disk"
    (the host's disk ran low)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    eof = False
    drain_until: float | None = None
    while True:
        if ctx.should_stop():
            return "cancelled"
        if disk.low():
            return "disk"
        now = time.monotonic()
        if now >= deadline:
            return "timeout"
        step = min(_POLL_SEC, deadline - now)
        if proc.poll() is not None:
            # Everything the command started is gone with the reaper: the pipe closes at
            # once, unless a process outside it got hold of the pipe. Read on briefly only.
            drain_until = drain_until or now + _DRAIN_SEC
            if eof or now >= drain_until:
                return "exited"
        if eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(step)
        elif poller.poll(step * 1000):
            chunk = os.read(fd, 65536)
            if chunk:
                output.add(chunk)
            else:
                eof = True


def _end(proc: subprocess.Popen[bytes], token: str) -> None:
    """Have the reaper kill everything the command started; force it if it does not."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(_END_GRACE_SEC)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_marked(token)


def _read_report(fd: int) -> int:
    """How many leftovers the reaper killed after the shell exited (0 if it did not say)."""
    os.set_blocking(fd, False)
    try:
        return int(os.read(fd, 32) or 0)
    except (OSError, ValueError):
        return 0
    finally:
        os.close(fd)


def _kill_marked(token: str) -> None:
    """SIGKILL every process whose environment carries this call's token, until none is left."""
    marker = f"{EXEC_ID_ENV}={token}".encode()
    deadline = time.monotonic() + _END_GRACE_SEC
    while time.monotonic() < deadline:
        marked = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{name}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    marked.append(int(name))
        if not marked:
            return
        for pid in marked:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(_POLL_SEC)


def _shown(output: _Output, limit: int) -> str:
    """The output as text, cut at ``limit`` characters (and saying so)."""
    text = output.data.decode("utf-8", errors="replace")
    cut = len(text) > limit or output.total > len(output.data)
    text = text[:limit]
    if cut:
        text += f"\n... [output truncated at {limit} characters; {output.total} bytes in all]"
    return text


def _format(
    proc: subprocess.Popen[bytes], output: _Output, outcome: str, timeout: int, limit: int
) -> str:
    text = _shown(output, limit)
    if outcome == "timeout":
        raise ToolError(
            f"command timed out after {timeout}s; its process group was killed, with every "
            f"other process it started. Output so far:\n{text}"
        )
    if outcome == "cancelled":
        raise ToolError(
            "command cancelled (stop requested); every process it started was killed. "
            f"Output so far:\n{text}"
        )
    body = text.rstrip() or "(no output)"
    if proc.returncode:
        body += f"\n[exit code {proc.returncode}]"
    return body
