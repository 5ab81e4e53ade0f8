"""docs/demo.md and docs/demo-ops.md are the output of ``python -m tests.demo`` and
``python -m tests.demo_ops``: the scenes they record must still happen. demo: config set
across hosts, a cron job through a beat failover, a heartbeat, a Sentinel heal, a pipeline, a
sub-agent, a lock conflict, nodes and a host killed mid-run, on two hosts started with
compose.yaml's commands; demo_ops: systemd units written, driven and run, a skill installed
and run and a malicious one refused, metrics scraped, uninstall."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_SEC = 420


def scenes(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE)


@pytest.mark.parametrize(("module", "record", "count"),
                         [("tests.demo", "demo.md", 11), ("tests.demo_ops", "demo-ops.md", 4)])  # fmt: skip
def test_the_recorded_demo_still_runs_scene_for_scene(module: str, record: str, count: int) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = demo.communicate(timeout=DEADLINE_SEC)
    except subprocess.TimeoutExpired:
        demo.terminate()  # SIGTERM: the demo stops every process it started
        out, err = demo.communicate(timeout=60)
        raise AssertionError(f"{module} took over {DEADLINE_SEC} s:\n{out}\n{err}") from None
    assert demo.returncode == 0, f"{out[-3000:]}\n{err[-6000:]}"
    recorded = (ROOT / "docs" / record).read_text()
    assert scenes(out) == scenes(recorded)
    assert len(scenes(recorded)) == count
