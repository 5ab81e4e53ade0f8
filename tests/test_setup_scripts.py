"""scripts/_venv.sh (the setup of ./scripts/fleet and ./scripts/test), run for real on a
copy of the tree: a first run says one line, and a failing pip install shows pip's error."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache")


def tree_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "clawfleet"
    for name in ("pyproject.toml", "README.md", "scripts", "claw_worker", "claw_ingress",
                 "claw_node", "beat_schedules"):  # fmt: skip
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=SKIP)
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def set_up(copy: Path) -> subprocess.CompletedProcess[str]:
    python = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run(
        ["bash", "-c", 'source scripts/_venv.sh && echo "ready"'],
        cwd=copy, env={"PATH": "/usr/bin:/bin", "PYTHON": python, "HOME": str(copy)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_first_install_is_quiet_and_a_failing_one_shows_why(tmp_path: Path) -> None:
    copy = tree_copy(tmp_path)
    first = set_up(copy)
    assert first.returncode == 0, first.stderr
    # Only our line: setuptools' "Editable installation" banner and pip's warnings are in
    # the log, not on the console.
    assert first.stderr == "installing clawfleet into .venv ...\n", first.stderr
    assert first.stdout == "ready\n"
    assert "Editable installation" in (copy / ".venv/install.log").read_text()

    # An install that fails: pip's error is shown, and the setup stops.
    (copy / ".venv/.clawfleet-installed").unlink()
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(re.sub(r'requires-python = "[^"]*"', 'requires-python = ">=99"', text))
    failed = set_up(copy)
    assert failed.returncode == 1 and "ready" not in failed.stdout
    assert "requires a different Python" in failed.stderr, failed.stderr  # pip's own words
    assert failed.stderr.endswith(
        f"pip install -e . failed (its output above is kept in {copy}/.venv/install.log)\n"
    ), failed.stderr
