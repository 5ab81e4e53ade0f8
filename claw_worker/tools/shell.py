"""The ``exec`` tool: one shell command in the workspace, with a deadline and a clean env.

The command runs in its own session (process group), so a timeout or a /stop kills
everything it started, not only the shell. The child never sees the worker's secrets.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time

from pydantic import Field

from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

SECRET_ENV_NAMES = frozenset({"CLAW_API_KEY", "OPENAI_API_KEY"})
SECRET_ENV_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
_POLL_SEC = 0.05


def child_env() -> dict[str, str]:
    """The worker's environment without anything that looks like a credential."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in SECRET_ENV_NAMES
        and not any(marker in name.upper() for marker in SECRET_ENV_MARKERS)
    }


class ExecParams(ToolParams):
    command: str = Field(min_length=1, description="Shell command, run with /bin/sh -c.")
    timeout_sec: int | None = Field(
        None, ge=1, description="Seconds before it is killed (capped by the configured limit)."
    )


class _Capture:
    """Drains a pipe in a thread, keeping at most ``limit`` bytes but counting all of them.

    Draining to the end matters: a child blocked on a full pipe would never exit.
    """

    def __init__(self, pipe: object, limit: int) -> None:
        self._pipe = pipe
        self._limit = limit
        self.data = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        read = self._pipe.read1  # type: ignore[attr-defined]
        while chunk := read(65536):
            self.total += len(chunk)
            room = self._limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]


class ExecTool(Tool[ExecParams]):
    name = "exec"
    description = (
        "Run a shell command in the workspace directory and return its combined stdout and "
        "stderr with the exit code."
    )
    Params = ExecParams

    def execute(self, params: ExecParams, ctx: ToolContext) -> str:
        cfg = ctx.config.tools.exec
        for pattern in cfg.deny_patterns:
            if re.search(pattern, params.command, re.IGNORECASE):
                raise ToolError(
                    f"command refused: it matches the deny pattern {pattern!r} "
                    "(tools.exec.deny_patterns)"
                )
        timeout = min(params.timeout_sec or cfg.timeout_sec, cfg.timeout_sec)
        ctx.workspace.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", params.command],
            cwd=ctx.workspace,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # UTF-8 takes up to 4 bytes a character; the character cap is applied after decoding.
        capture = _Capture(proc.stdout, cfg.max_output_chars * 4)
        outcome = _wait(proc, capture, time.monotonic() + timeout, ctx)
        if outcome != "exited":
            _kill_group(proc)
        capture.thread.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        return _format(proc, capture, outcome, timeout, cfg.max_output_chars)


def _wait(
    proc: subprocess.Popen[bytes], capture: _Capture, deadline: float, ctx: ToolContext
) -> str:
    """Wait for the shell to exit and its output to close: "exited", "timeout" or "cancelled".

    Output closing is awaited too: a background child still holding the pipe is part of
    the command, and is killed with it at the deadline.
    """
    while True:
        if ctx.should_stop():
            return "cancelled"
        if proc.poll() is not None and not capture.thread.is_alive():
            return "exited"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        step = min(_POLL_SEC, remaining)
        if capture.thread.is_alive():
            capture.thread.join(step)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(step)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group already ended
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _format(
    proc: subprocess.Popen[bytes], capture: _Capture, outcome: str, timeout: int, limit: int
) -> str:
    text = capture.data.decode("utf-8", errors="replace")
    cut = len(text) > limit or capture.total > len(capture.data)
    text = text[:limit]
    if cut:
        text += f"\n... [output truncated at {limit} characters; {capture.total} bytes in all]"
    if outcome == "timeout":
        raise ToolError(
            f"command timed out after {timeout}s; its process group was killed. "
            f"Output so far:\n{text}"
        )
    if outcome == "cancelled":
        raise ToolError(f"command cancelled (stop requested). Output so far:\n{text}")
    body = text.rstrip() or "(no output)"
    if proc.returncode:
        body += f"\n[exit code {proc.returncode}]"
    return body
