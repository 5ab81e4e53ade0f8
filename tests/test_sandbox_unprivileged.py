"""``exec`` as an unprivileged worker runs it (the container image's uid 1000, or a systemd
unit's ``User=``): bubblewrap then builds its namespaces without root, and ``max_processes``
holds through RLIMIT_NPROC rather than a pids cgroup. The suite runs as root here, so this
test runs the real tool in a child process under a uid of its own, which owns nothing else
on the machine (RLIMIT_NPROC counts every process of a uid), with a CLAW_HOME that uid owns.

The interpreter may live where only root can pass (pyenv's under /root here), which no real
unprivileged worker's does: the child then runs in a mount namespace of its own where that
directory is a tmpfs holding only the interpreter's tree, bound from the real one; nothing
else on the machine changes. The attempts are those of tests/test_sandbox.py, counted in the
campaign.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.campaign import record

UID = 61_000 + os.getpid() % 1000  # no passwd entry: no process of the machine is its
SECRET = "sk-unpriv-" + uuid.uuid4().hex
API_KEY = "sk-unpriv-config-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(os.getuid() != 0, reason="needs root to run the tool as another uid"),
    pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap is not installed"),
]

# Runs as UID: the tool's posture, then each command's output, as JSON on stdout.
CHILD = """
import json, os, sys
from pathlib import Path
from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, default_tools
from claw_worker.tools.exec_posture import exec_posture

assert os.getuid() != 0 and os.geteuid() != 0
workspace, commands = Path(sys.argv[1]), json.loads(sys.argv[2])
config = Config.model_validate({"tools": {"exec": {
    "sandbox": "bwrap", "max_processes": 32, "timeout_sec": 8, "cpu_sec": 10}}})
tools, ctx = default_tools(config), ToolContext(workspace, "t:1", config)
outputs = [tools.run("exec", {"command": c}, ctx) for c in commands]
print(json.dumps({"posture": exec_posture(config.tools.exec), "outputs": outputs}))
"""

# Connects to argv[1]:argv[2] and says PING: "GOT" and the answer if anything answers.
PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
    '    s.sendall(b"PING\\r\\n"); print("GOT", s.recv(64))\n'
    'except OSError as e: print("refused", e)\n'
)

# In a private mount namespace: $1, a directory others cannot pass, becomes a tmpfs holding
# only $1/$2, bound from the real one (kept reachable at $3); then the rest runs.
EXPOSE = """
set -e
mount --bind "$1" "$3"
mount -t tmpfs -o mode=0755 tmpfs "$1"
mkdir "$1/$2"
mount --bind "$3/$2" "$1/$2"
shift 3
exec "$@"
"""


def closed_ancestor(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not pass (no o+x)."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & 0o001:
            return parent
    return None


def as_uid(argv: list[str], keep: Path) -> list[str]:
    """``argv`` run as UID, with the interpreter's tree passable (see the module's doc)."""
    setpriv, unshare = shutil.which("setpriv"), shutil.which("unshare")
    if setpriv is None or unshare is None:
        pytest.skip("setpriv and unshare (util-linux) are needed to run as another uid")
    if closed_ancestor(REPO / "claw_worker") is not None:
        pytest.skip(f"uid {UID} cannot reach the checkout at {REPO}")
    argv = [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--", *argv]
    interpreter = Path(sys.executable).resolve()
    closed = closed_ancestor(interpreter)
    if closed is None:
        return argv
    under = interpreter.relative_to(closed).parts[0]
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", EXPOSE,
            "expose", str(closed), under, str(keep), *argv]  # fmt: skip


@pytest.fixture
def home() -> Iterator[Path]:
    """A CLAW_HOME owned by UID, with a config.json holding an API key and a workspace,
    under a directory outside pytest's (root-only) temporary tree."""
    base = Path(tempfile.mkdtemp(prefix="claw-unpriv-"))
    base.chmod(0o755)
    home = base / "home"
    (home / "workspace").mkdir(parents=True)
    (base / "keep").mkdir()
    (home / "config.json").write_text(json.dumps({"providers": {"openai": {"api_key": API_KEY}}}))
    (home / "config.json").chmod(0o600)
    for path in (home, home / "workspace", home / "config.json"):
        os.chown(path, UID, UID)
    try:
        yield home
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_as_uid(home: Path, commands: list[str], script: str = CHILD) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "CLAW_HOME": str(home), "CLAW_API_KEY": SECRET, "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }  # fmt: skip
    child = [sys.executable, "-c", script, str(home / "workspace"), json.dumps(commands)]
    done = subprocess.run(
        as_uid(child, home.parent / "keep"), env=env, cwd=home, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0 and "unshare failed" in done.stderr:  # no CAP_SYS_ADMIN here
        pytest.skip(f"cannot make a mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_exec_as_an_unprivileged_worker_is_sandboxed_and_its_processes_limited(
    home: Path, redis_server
) -> None:
    outside = Path(tempfile.gettempdir()) / f"escape-{uuid.uuid4().hex}"
    redis_port = redis_server.port
    targets = [("127.0.0.1", redis_port), ("localhost", redis_port), ("169.254.169.254", 80),
               ("10.0.0.1", 6379)]  # fmt: skip
    attempts = {
        "environment": [
            "cat /proc/$PPID/environ",
            "cat /proc/1/environ",
            "env",
            "for p in /proc/[0-9]*; do cat $p/environ; done 2>/dev/null",
        ],
        "config": [f"cat {home}/config.json", "cat $HOME/config.json", "ls -la /proc/1/cwd/"],
        "network": [f"python3 -c '{PROBE}' {host} {port}" for host, port in targets],
        "write": [f"echo pwned > {outside}", f"echo pwned > {home}/pwned", "touch /etc/pwned"],
        "fork bomb": [  # past the deny list on purpose: the limit must hold on its own
            "i=0; while [ $i -lt 400 ]; do sleep 30 & i=$((i+1)); done; echo started $i",
            "python3 -c 'import os\nwhile True:\n    try: os.fork()\n    except OSError: pass'",
        ],
    }
    commands = [c for group in attempts.values() for c in group] + ["echo kept > here.txt"]
    result = run_as_uid(home, commands)
    assert result["posture"]["sandbox"] == "bwrap", result["posture"]
    assert result["posture"]["process_limit"] == "RLIMIT_NPROC", result["posture"]
    outputs = iter(result["outputs"])
    for area, group in attempts.items():
        escapes = 0
        for _command, out in zip(group, outputs, strict=False):
            if area == "fork bomb":
                lowered = out.lower()
                held = "fork" in lowered or "resource temporarily unavailable" in lowered
                escapes += not (held or out.startswith("Error: command timed out"))
                escapes += "started 400" in out
            else:
                escapes += SECRET in out or API_KEY in out or "+PONG" in out or "GOT" in out
        record(f"exec as an unprivileged worker: {area}", tried=len(group),
               rejected=len(group) - escapes, escapes=escapes)  # fmt: skip
        assert escapes == 0, (area, result["outputs"])
    assert not outside.exists() and not (home / "pwned").exists()
    assert not Path("/etc/pwned").exists()
    assert (
        next(outputs) == "(no output)" and (home / "workspace" / "here.txt").read_text() == "kept\n"
    )
    assert redis_server.client().ping()


# Runs as UID without a sandbox (bubblewrap missing, or a container where it cannot make
# namespaces): named as a worker first, as every fleet process names itself at start.
UNSANDBOXED_CHILD = CHILD.replace(
    '"sandbox": "bwrap"', '"sandbox": "none"'
).replace(
    "assert os.getuid() != 0", "from claw_worker.process import set_identity\n"
    "set_identity('worker')\nassert os.getuid() != 0"
)  # fmt: skip


def test_without_a_sandbox_a_command_cannot_read_the_workers_environment(home: Path) -> None:
    """With no sandbox the command runs as the worker's user, and it read the API key from
    ``/proc/$PPID/environ`` and every fleet process's (a container runs exec this way: its
    seccomp profile refuses bubblewrap's namespaces). A fleet process is not dumpable, so
    its environment and memory are root's to read, not its user's."""
    assert (
        '"sandbox": "none"' in UNSANDBOXED_CHILD and "set_identity('worker')" in UNSANDBOXED_CHILD
    )
    attempts = [
        "cat /proc/$PPID/environ",
        "for p in /proc/[0-9]*; do cat $p/environ; done 2>/dev/null",
        "for p in /proc/[0-9]*; do head -c 100000 $p/mem; done 2>/dev/null | strings",
    ]
    own_environment = "cat /proc/self/environ | tr '\\0' '\\n' | grep -c ^PATH="
    result = run_as_uid(home, [*attempts, own_environment], UNSANDBOXED_CHILD)
    assert result["posture"]["sandbox"].startswith("none"), result["posture"]
    *outputs, own = result["outputs"]
    escapes = sum(SECRET in out for out in outputs)
    record("exec without a sandbox: the fleet's environment", tried=len(attempts),
           rejected=len(attempts) - escapes, escapes=escapes)  # fmt: skip
    assert escapes == 0, outputs
    assert own.strip() == "1", own  # the command's own environment stays readable to it
