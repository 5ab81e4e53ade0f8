"""``run`` on a node: one shell command, guarded like the worker's ``exec``.

- Refused when it matches a deny pattern (``exec``'s defaults plus ``--deny``), compiled with
  RE2 so a long command cannot make a pattern backtrack.
- Run under ``exec``'s reaper script (``claw_worker/tools/_reaper.py``, standard library only,
  started with ``python -I -S``): nothing the command starts outlives it, ``setsid`` and
  double forks included.
- A minimal environment: ``PATH``, ``HOME``, ``LANG``, ``TZ`` of the node, nothing else (no
  token reaches the command).
- A deadline (the request's, at most ``--run-timeout``), after which everything it started
  is killed, and an output cap (``--max-output`` characters; the rest counted, not kept).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import re2

import claw_worker

REAPER = Path(claw_worker.__file__).parent / "tools" / "_reaper.py"
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
EXEC_ID_ENV = "CLAW_EXEC_ID"
POLL_SEC = 0.05
END_GRACE_SEC = 3.0


@dataclass(frozen=True)
class RunResult:
    output: str
    exit_code: int | None  # None when it was killed at the deadline
    timed_out: bool
    truncated: bool


@lru_cache(maxsize=128)
def _regex(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = False
    return re2.compile(pattern, options)


def denied_by(command: str, patterns: tuple[str, ...]) -> str | None:
    """The deny pattern ``command`` matches, or None."""
    return next((p for p in patterns if _regex(p).search(command)), None)


def run_command(command: str, *, cwd: Path, timeout: float, max_chars: int) -> RunResult:
    token = uuid.uuid4().hex
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    report, report_w = os.pipe()
    try:
        proc = subprocess.Popen(
            # The reaper's arguments: worker pid, report fd, no limits, no pids cgroup, argv.
            [sys.executable or "python3", "-I", "-S", str(REAPER), str(os.getpid()),
             str(report_w), "", "", "/bin/sh", "-c", command],
            cwd=cwd, env={**env, EXEC_ID_ENV: token}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(report_w,),
        )  # fmt: skip
    finally:
        os.close(report_w)
    assert proc.stdout is not None
    kept, total = bytearray(), 0
    limit = max_chars * 4  # UTF-8: the character cap is applied after decoding
    deadline = time.monotonic() + timeout
    timed_out = False
    poller = select.poll()
    poller.register(proc.stdout.fileno(), select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not poller.poll(min(POLL_SEC, left) * 1000):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            total += len(chunk)
            kept += chunk[: max(0, limit - len(kept))]
    finally:
        if timed_out:
            _end(proc)
        else:  # the output ended: the reaper is exiting (or something else holds the pipe)
            try:
                proc.wait(END_GRACE_SEC)
            except subprocess.TimeoutExpired:
                _end(proc)
        proc.wait()
        proc.stdout.close()
        os.close(report)
    text = kept.decode("utf-8", errors="replace")
    truncated = len(text) > max_chars or total > len(kept)
    text = text[:max_chars]
    return RunResult(text, None if timed_out else proc.returncode, timed_out, truncated)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Have the reaper kill what the command started; force it if it does not."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(END_GRACE_SEC)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
