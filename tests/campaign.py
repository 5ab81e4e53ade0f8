"""The bad-input campaign's tally (docs/security.md).

A test that throws hostile input at a layer records what it tried and what came of it:
``record("exec: network", tried=4, rejected=4)``. ``escapes`` counts inputs that got
through (read a secret, wrote outside the workspace, reached the network, ...) and
``server_errors`` answers that were a 5xx or a traceback; both must stay 0, and the test
asserts that itself: the tally is the figures, not the check.

Each process appends JSON lines to its own file under ``$CLAW_CAMPAIGN_DIR`` (default
``.campaign/`` at the repository's root), so pytest-xdist's workers never share a file; at
the end of the run ``tests/fixtures/campaign.py`` prints one table and writes it to
``.campaign/summary.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def campaign_dir() -> Path:
    return Path(os.environ.get("CLAW_CAMPAIGN_DIR") or ROOT / ".campaign")


def record(
    area: str, *, tried: int, rejected: int, escapes: int = 0, server_errors: int = 0
) -> None:
    """Add one test's figures to ``area`` (a layer and what was tried: "exec: network")."""
    folder = campaign_dir()
    folder.mkdir(parents=True, exist_ok=True)
    line = {"area": area, "tried": tried, "rejected": rejected, "escapes": escapes,
            "server_errors": server_errors}  # fmt: skip
    with (folder / f"tally-{os.getpid()}.jsonl").open("a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")


def summary(folder: Path | None = None) -> list[dict[str, int | str]]:
    """Every area's totals, in name order."""
    totals: dict[str, dict[str, int | str]] = {}
    for path in sorted((folder or campaign_dir()).glob("tally-*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            row = totals.setdefault(line["area"], {"area": line["area"], "tried": 0,
                                    "rejected": 0, "escapes": 0, "server_errors": 0})  # fmt: skip
            for key in ("tried", "rejected", "escapes", "server_errors"):
                row[key] = int(row[key]) + int(line[key])
    return [totals[name] for name in sorted(totals)]


def table(rows: list[dict[str, int | str]]) -> str:
    """Markdown, as docs/security.md quotes it."""
    lines = ["| area | inputs tried | rejected | escapes | server errors |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    sums = {"tried": 0, "rejected": 0, "escapes": 0, "server_errors": 0}
    for row in rows:
        lines.append(f"| {row['area']} | {row['tried']} | {row['rejected']} | "
                     f"{row['escapes']} | {row['server_errors']} |")  # fmt: skip
        for key in sums:
            sums[key] += int(row[key])
    lines.append(f"| **all** | **{sums['tried']}** | **{sums['rejected']}** | "
                 f"**{sums['escapes']}** | **{sums['server_errors']}** |")  # fmt: skip
    return "\n".join(lines)
