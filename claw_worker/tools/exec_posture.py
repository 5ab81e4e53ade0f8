"""What isolation ``exec`` commands get on this host, for ``clawctl status``.

Each worker puts it in its registry record (and again after a config reload), so an
operator sees on one screen a worker whose commands run without a sandbox or without a
process limit (root without a pids cgroup), not only in that worker's log. Nothing here
runs a command but bwrap's own probe, which the first ``exec`` would run anyway (cached).
"""

from __future__ import annotations

from claw_worker.config.schema import ExecToolConfig
from claw_worker.tools.exec_limits import process_limit
from claw_worker.tools.sandbox import find_bwrap

BWRAP = "bwrap"


def exec_posture(cfg: ExecToolConfig) -> dict[str, str | int | bool]:
    """``sandbox``: "bwrap", or "none: why"; "refused: why" when ``tools.exec.sandbox`` is
    "bwrap" and it cannot be used (every command is refused). ``process_limit``: how
    ``max_processes`` holds ("RLIMIT_NPROC", "pids cgroup") or "none: why"."""
    if cfg.sandbox == "none":
        sandbox = "none: tools.exec.sandbox is 'none'"
    else:
        bwrap, problem = find_bwrap()
        if bwrap is not None:
            sandbox = BWRAP
        else:
            sandbox = f"{'refused' if cfg.sandbox == 'bwrap' else 'none'}: {problem}"
    return {
        "sandbox": sandbox,
        "process_limit": process_limit(),
        "max_processes": cfg.max_processes,
        "network": cfg.allow_network,
    }
