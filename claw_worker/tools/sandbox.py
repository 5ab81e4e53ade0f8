"""Where ``exec`` and ``skill_exec`` commands run: under bubblewrap, or on the host.

``tools.exec.sandbox``: "bwrap" (refused with a clear error when bwrap is missing or does
not work), "auto" (bwrap when it is installed and works, else the host, with one warning
per process) or "none". Under bubblewrap a command gets:

- its own PID namespace and a new /proc: no view of the worker (``/proc/$PPID/environ``);
- no network unless ``tools.exec.allow_network``: no Redis, no metadata service, and no
  abstract unix sockets of the host;
- the system read-only (``--ro-bind / /``), fresh /tmp, /dev and /run (no host sockets
  such as docker.sock; the tmpfs ones capped at ``tools.exec.tmpfs_mb``: RAM),
  $CLAW_HOME and every user's home (/home, /root: ~/.ssh ...) hidden under empty tmpfs,
  a config file elsewhere ($CLAW_CONFIG) hidden behind /dev/null; the workspace, bound
  back read-write, is the only writable place that lasts;
- ``--die-with-parent`` (it dies with the reaper), ``--new-session`` (no terminal
  injection), ``--cap-drop ALL``, and ``--clearenv`` then exactly the cleaned environment.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from claw_worker.config.paths import claw_home, config_path
from claw_worker.config.schema import ExecToolConfig
from claw_worker.tools.base import ToolError

log = logging.getLogger(__name__)

FRESH_DIRS = (Path("/tmp"), Path("/run"))  # empty tmpfs in the sandbox
# Every user's home, hidden too: a root worker could read them all (~/.ssh, tokens).
OTHER_HOMES = (Path("/home"), Path("/root"))
REAPER_SCRIPT = Path(__file__).with_name("_reaper.py")  # runs inside too (shell.py)

_PROBE_TIMEOUT_SEC = 10.0
INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install bubblewrap)"


def sandbox_prefix(
    cwd: Path, workspace: Path, env: Mapping[str, str], cfg: ExecToolConfig
) -> list[str] | None:
    """The bwrap command line a command's argv follows (after ``--``), or None when
    ``cfg.sandbox`` has commands run on the host."""
    bwrap = sandbox_program(cfg)
    if bwrap is None:
        return None
    return bwrap_prefix(bwrap, cwd, workspace, env, cfg.allow_network, cfg.tmpfs_mb)


def sandbox_program(cfg: ExecToolConfig) -> str | None:
    """bwrap's path when commands run under it, None when on the host; a ``ToolError``
    when the config asks for bwrap and it cannot be used."""
    if cfg.sandbox == "none":
        return None
    bwrap, problem = find_bwrap()
    if bwrap is not None:
        return bwrap
    if cfg.sandbox == "bwrap":
        raise ToolError(
            f"command not run: tools.exec.sandbox is 'bwrap' but {problem}, or set "
            "tools.exec.sandbox to 'auto' or 'none'"
        )
    _warn_unsandboxed(problem)
    return None


def find_bwrap() -> tuple[str | None, str]:
    """bwrap's path when it is installed and works here, else (None, why not)."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return None, f"bwrap is not installed (not on PATH); {INSTALL_HINT}"
    problem = _bwrap_problem(bwrap)
    return (bwrap, "") if problem is None else (None, problem)


def bwrap_prefix(
    bwrap: str, cwd: Path, workspace: Path, env: Mapping[str, str], allow_network: bool,
    tmpfs_mb: int,
) -> list[str]:  # fmt: skip
    workspace = workspace.resolve()
    home = claw_home().expanduser().resolve()

    def tmpfs(path: Path) -> list[str]:  # capped where bwrap can (--size: bwrap >= 0.6)
        size = ["--size", str(tmpfs_mb * 1024 * 1024)] if _bwrap_has_size(bwrap) else []
        return [*size, "--tmpfs", str(path)]

    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            *(arg for d in FRESH_DIRS for arg in tmpfs(d)), "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL"]  # fmt: skip
    if not allow_network:
        argv.append("--unshare-net")
    elif Path("/run/systemd/resolve").is_dir():  # resolv.conf often points there
        argv += ["--ro-bind", "/run/systemd/resolve", "/run/systemd/resolve"]
    # Hidden under empty tmpfs: $CLAW_HOME (config, environment file, logs, data) and the
    # worker user's home (~/.ssh, cloud credentials). A hidden directory that holds the
    # workspace is hidden first and the workspace bound back into it; one inside the
    # workspace is hidden after the bind.
    homes = (home, Path.home().resolve(), *OTHER_HOMES)
    hidden = sorted({h for h in homes if h.is_dir() and h != workspace},
                    key=lambda h: len(h.parts))  # fmt: skip
    around = [h for h in hidden if not h.is_relative_to(workspace)]
    inside = [h for h in hidden if h.is_relative_to(workspace)]
    for path in around:
        argv += tmpfs(path)
    argv += ["--bind", str(workspace), str(workspace)]
    for path in inside:
        argv += tmpfs(path)
    # The interpreter and the reaper script run inside: they may live in a hidden home
    # (pyenv, a venv in ~) or under /tmp (a checkout there): bound back, read-only.
    covered = [*hidden, *FRESH_DIRS]
    for path in _interpreter_paths():
        if any(path.is_relative_to(h) for h in covered):
            argv += ["--ro-bind", str(path), str(path)]
    config = config_path().expanduser()
    if config.is_file() and not any(config.resolve().is_relative_to(h) for h in hidden):
        argv += ["--ro-bind", "/dev/null", str(config.resolve())]
    argv += ["--chdir", str(cwd.resolve()), "--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return [*argv, "--"]


def _interpreter_paths() -> list[Path]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths = {Path(p).resolve() for p in prefixes} | {Path(sys.executable).resolve().parent}
    return sorted(paths | {REAPER_SCRIPT.resolve()})


@lru_cache(maxsize=4)
def _bwrap_has_size(bwrap: str) -> bool:
    """Whether this bwrap caps a tmpfs (``--size``, bubblewrap 0.6); said once if not."""
    try:
        shown = subprocess.run([bwrap, "--help"], capture_output=True, timeout=_PROBE_TIMEOUT_SEC,
                               stdin=subprocess.DEVNULL).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        shown = b""
    if b"--size" in shown:
        return True
    log.warning("exec: this bwrap has no --size (bubblewrap < 0.6): the sandbox's /tmp is "
                "not capped by tools.exec.tmpfs_mb")  # fmt: skip
    return False


@lru_cache(maxsize=4)
def _bwrap_problem(bwrap: str) -> str | None:
    """Why bwrap cannot build our sandbox here (e.g. no user namespaces), once per process."""
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--unshare-pid", "--unshare-net", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL", "--", "/bin/true"]  # fmt: skip
    try:
        done = subprocess.run(
            probe, capture_output=True, timeout=_PROBE_TIMEOUT_SEC, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap ({bwrap}) could not be run: {exc}"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return (
            f"bwrap ({bwrap}) does not work here: {why[-1] if why else 'exit ' + str(done.returncode)}"
            " (it needs unprivileged user namespaces or root)"
        )
    return None


@lru_cache(maxsize=1)
def _warn_unsandboxed(problem: str) -> None:
    log.warning(
        "exec: running commands without a sandbox (tools.exec.sandbox is 'auto' and %s); "
        "they can read what the worker's user can read and reach the network",
        problem,
    )
