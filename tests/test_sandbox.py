"""``exec`` under bubblewrap and its resource limits, tried from inside through the real tool:
reading the worker's environment and CLAW_HOME, reaching Redis and the metadata service,
writing outside the workspace, a fork bomb, filling the disk, burning CPU, hogging memory.

Every attempt is counted in the campaign (tests/campaign.py). The process-limit tests run
only where the limit holds (claw_worker/tools/exec_limits.py), so they cannot hurt the
machine they run on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, default_tools
from claw_worker.tools.exec_limits import process_limit_holds
from tests.campaign import record
from tests.fixtures.claw_home import ClawHome

needs_bwrap = pytest.mark.skipif(
    not shutil.which("bwrap"), reason="bubblewrap is not installed (apt-get install bubblewrap)"
)
SECRET = "sk-campaign-" + uuid.uuid4().hex
API_KEY = "sk-config-" + uuid.uuid4().hex
CRASHED = "Error: exec failed:"


def exec_ctx(workspace: Path, **exec_cfg: Any) -> ToolContext:
    config = Config.model_validate({"tools": {"exec": {"sandbox": "bwrap", **exec_cfg}}})
    return ToolContext(workspace, "t:1", config)


def run(ctx: ToolContext, command: str) -> str:
    return default_tools(ctx.config).run("exec", {"command": command}, ctx)


@pytest.fixture
def home(claw_home: ClawHome, monkeypatch: pytest.MonkeyPatch) -> ClawHome:
    """A CLAW_HOME with a config.json holding a fake API key, a workspace inside it, and
    fake secrets in this (the worker's) process environment."""
    claw_home.write_config({"providers": {"openai": {"api_key": API_KEY}}})
    claw_home.workspace.mkdir()
    monkeypatch.setenv("CLAW_API_KEY", SECRET)
    monkeypatch.setenv("CAMPAIGN_SERVICE_TOKEN", SECRET)
    monkeypatch.setenv("CLAW_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:6379/0")
    return claw_home


def tally_secret(area: str, ctx: ToolContext, attempts: list[str], secret: str) -> None:
    """Run each command: rejected when ``secret`` is not in its output, else an escape."""
    outputs = [run(ctx, command) for command in attempts]
    tally(area, [(out, secret not in out, secret in out) for out in outputs])


def tally(area: str, results: list[tuple[str, bool, bool]]) -> None:
    """``results``: (output, rejected, escaped) per attempt; records and asserts."""
    escapes = sum(escaped for _, _, escaped in results)
    # A tool bug comes back as "Error: exec failed: <exception>" (the registry's catch-all);
    # a Python traceback in the output is the command's own.
    errors = sum(out.startswith(CRASHED) for out, _, _ in results)
    rejected = sum(rej for _, rej, _ in results)
    record(area, tried=len(results), rejected=rejected, escapes=escapes, server_errors=errors)
    assert (escapes, errors) == (0, 0), results


@needs_bwrap
def test_the_worker_environment_cannot_be_read(home: ClawHome) -> None:
    ctx = exec_ctx(home.workspace)
    grandparent = "$(awk '{print $4}' /proc/$PPID/stat)"
    attempts = [
        "cat /proc/$PPID/environ",
        f"cat /proc/{grandparent}/environ",
        "cat /proc/*/environ",
        "cat /proc/1/environ",
        f"cat /proc/{os.getpid()}/environ",
        "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done",
        "env",
        "cat /proc/self/environ",
        "ps auxe 2>&1 || ls /proc",
    ]
    results = []
    for command in attempts:
        out = run(ctx, command)
        results.append((out, SECRET not in out, SECRET in out))
    # Only the sandbox's own processes are visible: not the worker's pid.
    assert str(os.getpid()) not in run(ctx, "ls /proc | grep -x '[0-9]*'").split()
    tally("exec: read the worker's environment", results)


@needs_bwrap
def test_claw_home_and_its_config_cannot_be_read(home: ClawHome) -> None:
    ctx = exec_ctx(home.workspace)
    attempts = [
        f"cat {home.config_file}",
        "cat ../config.json",
        f"ls -la {home.path}",
        f"grep -r api_key {home.path}",
        f"find {home.path.parent} -name config.json -exec cat {{}} +",
        "cat $HOME/.claw/config.json",
    ]
    tally_secret("exec: read CLAW_HOME", ctx, attempts, API_KEY)
    (home.workspace / "note.txt").write_text("in the workspace")
    assert run(ctx, "cat note.txt") == "in the workspace"


@needs_bwrap
def test_the_users_home_is_hidden_too(
    home: ClawHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_home = tmp_path / "user-home"
    (user_home / ".ssh").mkdir(parents=True)
    (user_home / ".ssh" / "id_ed25519").write_text(API_KEY)
    (user_home / ".aws").mkdir()
    (user_home / ".aws" / "credentials").write_text(f"aws_secret_access_key = {API_KEY}")
    monkeypatch.setenv("HOME", str(user_home))
    ctx = exec_ctx(home.workspace)
    attempts = [
        f"cat {user_home}/.ssh/id_ed25519",
        "cat ~/.aws/credentials",
        f"grep -r {API_KEY[:8]} {user_home}",
        f"ls -la {user_home}/.ssh",
    ]
    tally_secret("exec: read the user's home", ctx, attempts, API_KEY)


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a home under /home")
def test_other_users_homes_are_hidden(home: ClawHome) -> None:
    """A root worker could read every home; under bwrap /home and /root are empty."""
    other = Path("/home") / f"claw-test-{uuid.uuid4().hex[:8]}"
    (other / ".ssh").mkdir(parents=True)
    try:
        (other / ".ssh" / "id_ed25519").write_text(API_KEY)
        attempts = [f"cat {other}/.ssh/id_ed25519", f"grep -r {API_KEY[:8]} /home /root",
                    "ls -la /home"]  # fmt: skip
        tally_secret("exec: read other users' homes", exec_ctx(home.workspace), attempts,
                     API_KEY)  # fmt: skip
        assert other.name not in run(exec_ctx(home.workspace), "ls -a /home")
    finally:
        shutil.rmtree(other)


@needs_bwrap
def test_no_network_no_redis_no_metadata_service(home: ClawHome, redis_server) -> None:
    ctx = exec_ctx(home.workspace, timeout_sec=20)
    port = redis_server.port
    probe = (
        "import socket,sys\n"
        "try:\n"
        "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
        "    s.sendall(b'PING\\r\\n'); print('GOT', s.recv(64))\n"
        "except OSError as e: print('refused', e)\n"
    )
    (home.workspace / "probe.py").write_text(probe)
    attempts = [
        f"python3 probe.py 127.0.0.1 {port}",
        f"python3 probe.py localhost {port}",
        f"python3 probe.py ::1 {port}",
        "python3 probe.py 169.254.169.254 80",
        "python3 probe.py 10.0.0.1 6379",
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo GOT",
        f"redis-cli -p {port} PING 2>&1 || true",
        f"curl -sS -m 3 http://127.0.0.1:{port}/ 2>&1 || true",
        "curl -sS -m 3 http://169.254.169.254/latest/meta-data/ 2>&1 || true",
    ]
    results = []
    for command in attempts:
        out = run(ctx, command)
        results.append((out, "GOT" not in out and "PONG" not in out, "PONG" in out))
    tally("exec: reach the network", results)
    assert redis_server.client().ping()  # the real one is there: only the sandbox is cut off
    allowed = run(
        exec_ctx(home.workspace, allow_network=True), f"python3 probe.py 127.0.0.1 {port}"
    )
    assert "+PONG" in allowed


@needs_bwrap
def test_nothing_outside_the_workspace_can_be_written(home: ClawHome, tmp_path: Path) -> None:
    ctx = exec_ctx(home.workspace)
    name = "escape-" + uuid.uuid4().hex
    outside = tmp_path / name  # a real /tmp directory of this test, outside the workspace
    targets = [
        Path("/etc") / name,
        Path("/tmp") / name,
        outside,
        Path.home() / name,
        home.path / name,
        home.workspace.parent / "config.json",
        Path("/usr/local/bin") / name,
        Path("/var/tmp") / name,
    ]
    before = home.config_file.read_text()
    results = []
    for target in targets:
        out = run(ctx, f"echo pwned > {target}; echo pwned >> {target}; touch {target}")
        escaped = (target.exists() and target != home.workspace.parent / "config.json") or (
            home.config_file.read_text() != before
        )
        results.append((out, not escaped, escaped))
    out = run(ctx, f"ln -s {home.path} link && echo x > link/{name}")
    escaped = (home.path / name).exists()
    results.append((out, not escaped, escaped))
    tally("exec: write outside the workspace", results)
    assert run(ctx, "echo kept > here.txt && cat here.txt") == "kept"
    assert (home.workspace / "here.txt").read_text() == "kept\n"


@needs_bwrap
@pytest.mark.skipif(not process_limit_holds(), reason="no process limit holds here (root "
                    "without a writable pids cgroup): a fork bomb could hurt the machine")  # fmt: skip
def test_a_fork_bomb_is_contained(home: ClawHome) -> None:
    ctx = exec_ctx(home.workspace, timeout_sec=6, max_processes=32, cpu_sec=10)
    attempts = [
        # The first two get past the deny list on purpose: the limits must hold on their own.
        "i=0; while [ $i -lt 400 ]; do sleep 30 & i=$((i+1)); done; echo started $i",
        "python3 -c 'import os\nwhile True:\n    try: os.fork()\n    except OSError: pass'",
        'b=b; eval "$b(){ $b|$b & }"; b',
    ]
    results = []
    for command in attempts:
        started = time.monotonic()
        out = run(ctx, command)
        took = time.monotonic() - started
        held = "fork" in out.lower() or "resource temporarily unavailable" in out.lower()
        held = held or out.startswith("Error: command timed out")
        results.append((out, held and took < 6 + 8, took >= 6 + 8))
    tally("exec: fork bomb", results)
    assert run(ctx, "echo alive") == "alive"


@needs_bwrap
def test_filling_the_disk_stops_at_the_file_size_limit(home: ClawHome) -> None:
    ctx = exec_ctx(home.workspace, max_file_mb=1, timeout_sec=20)
    attempts = [
        "head -c 50000000 /dev/zero > big1",
        "yes x > big2",
        "python3 -c \"open('big3','wb').write(b'x' * 50_000_000)\"",
        "cat /dev/urandom > big4",
    ]
    results = []
    for index, command in enumerate(attempts, 1):
        out = run(ctx, command)
        size = (home.workspace / f"big{index}").stat().st_size
        results.append((out, size <= 1024 * 1024 and "[exit code" in out, size > 1024 * 1024))
    tally("exec: fill the disk", results)


def free_mb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // (1024 * 1024)


def test_a_command_is_not_run_and_is_stopped_when_the_disk_runs_low(home: ClawHome) -> None:
    """Many files each under max_file_mb still fill a disk: the guard refuses to start a
    command when free space is below tools.exec.min_free_disk_mb, and stops one whose writes
    take it below (here the floor sits 60 MB under what is free, and the command writes
    100 MB and then waits: only the guard can end it before its timeout)."""
    ws = home.workspace
    refused = run(
        exec_ctx(ws, sandbox="auto", min_free_disk_mb=free_mb(ws) + 1000), "touch started"
    )
    assert refused.startswith("Error: command not run: the disk holding the workspace has ")
    assert not (ws / "started").exists()
    ctx = exec_ctx(ws, sandbox="auto", min_free_disk_mb=max(1, free_mb(ws) - 60),
                   max_file_mb=128, timeout_sec=60)  # fmt: skip
    began = time.monotonic()
    out = run(ctx, "head -c 100000000 /dev/zero > big && echo written && sleep 50")
    took = time.monotonic() - began
    (ws / "big").unlink(missing_ok=True)
    assert out.startswith("Error: command stopped: the disk holding the workspace has "), out
    # Stopped before its timeout (whether before or after "written": the disk is shared, and
    # other writers on it may take it below the floor first).
    assert took < 50, (out, took)
    record("exec: disk below tools.exec.min_free_disk_mb", tried=2, rejected=2)


@needs_bwrap
def test_the_sandbox_tmp_is_capped_so_it_cannot_eat_memory(home: ClawHome) -> None:
    """/tmp in the sandbox is tmpfs (RAM): capped at tools.exec.tmpfs_mb, whatever the
    per-file limit allows."""
    ctx = exec_ctx(home.workspace, tmpfs_mb=8, max_file_mb=64)
    out = run(ctx, "for i in 1 2 3; do head -c 5000000 /dev/zero > /tmp/f$i || exit 9; done; "
                   "du -sm /tmp")  # fmt: skip
    assert "No space left on device" in out and "[exit code 9]" in out, out
    record("exec: fill the sandbox's /tmp (RAM)", tried=1, rejected=1)


@needs_bwrap
def test_cpu_burn_is_killed_at_the_cpu_limit(home: ClawHome) -> None:
    ctx = exec_ctx(home.workspace, cpu_sec=1, timeout_sec=30)
    attempts = ["while :; do :; done", "python3 -c 'while True: pass'"]
    results = []
    for command in attempts:
        started = time.monotonic()
        out = run(ctx, command)
        took = time.monotonic() - started
        results.append((out, "[exit code" in out and took < 20, took >= 20))
    tally("exec: CPU burn", results)


@needs_bwrap
def test_a_memory_hog_fails_at_the_memory_limit(home: ClawHome) -> None:
    ctx = exec_ctx(home.workspace, memory_mb=256, timeout_sec=30)
    attempts = [
        "python3 -c 'x = bytearray(2 * 1024**3); print(\"GOT\")'",
        "python3 -c 'x = [bytearray(64 * 1024**2) for _ in range(64)]; print(\"GOT\")'",
        "x=$(head -c 1000000000 /dev/zero | tr '\\0' x); echo GOT ${#x}",
    ]
    results = []
    for command in attempts:
        out = run(ctx, command)
        results.append((out, "GOT" not in out and "[exit code" in out, "GOT" in out))
    tally("exec: memory hog", results)


def test_explicit_bwrap_that_is_missing_says_how_to_install_it(
    home: ClawHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    out = run(exec_ctx(home.workspace), "touch ran")
    assert out.startswith("Error: command not run: tools.exec.sandbox is 'bwrap' but bwrap is")
    assert "apt-get install bubblewrap" in out
    assert not (home.workspace / "ran").exists()


def test_auto_without_bwrap_runs_on_the_host_and_warns_once(home: ClawHome, tmp_path: Path) -> None:
    """In a fresh process (the warning is once per process), with no bwrap on PATH."""
    script = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from claw_worker.config.schema import Config\n"
        "from claw_worker.tools import ToolContext, default_tools\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "ctx = ToolContext(Path(sys.argv[1]), 't:1', Config())\n"
        "tools = default_tools(ctx.config)\n"
        "for _ in range(3): print(tools.run('exec', {'command': 'echo ran'}, ctx))\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "echo"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {**home.env(), "PATH": str(bin_dir)}
    done = subprocess.run([sys.executable, "-c", script, str(home.workspace)], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.stdout.split() == ["ran", "ran", "ran"], done.stderr
    warnings = [line for line in done.stderr.splitlines() if "without a sandbox" in line]
    assert len(warnings) == 1, done.stderr
    assert "bwrap is not installed" in warnings[0]


def test_limit_settings_are_validated() -> None:
    for field, bad in (("cpu_sec", 0), ("memory_mb", 16), ("max_processes", 1),
                       ("max_file_mb", 0), ("sandbox", "docker")):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            Config.model_validate({"tools": {"exec": {field: bad}}})
    assert json.loads(Config().model_dump_json())["tools"]["exec"]["sandbox"] == "auto"
