"""docs/demo.md is the output of ``python -m tests.demo``: the scenes it records (config set
across hosts, a cron job through a beat failover, a heartbeat, a Sentinel heal, a pipeline, a
sub-agent, a lock conflict, nodes, a host killed mid-run) must still happen, on two hosts
started with compose.yaml's commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_SEC = 420


def scenes(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE)


def test_the_recorded_demo_still_runs_scene_for_scene() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "tests.demo"], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = demo.communicate(timeout=DEADLINE_SEC)
    except subprocess.TimeoutExpired:
        demo.terminate()  # SIGTERM: the demo stops every process it started
        out, err = demo.communicate(timeout=60)
        raise AssertionError(f"the demo took over {DEADLINE_SEC} s:\n{out}\n{err}") from None
    assert demo.returncode == 0, f"{out[-3000:]}\n{err[-6000:]}"
    recorded = (ROOT / "docs" / "demo.md").read_text()
    assert scenes(out) == scenes(recorded)
    assert len(scenes(recorded)) == 11
