"""Worker code that reads or writes workspace files on its own (not through the file tools)
cannot be led out of the workspace, or blocked, by what the agent's ``exec`` put there:
the bootstrap files of the system prompt, the memory layers and their index, HEARTBEAT.md,
a node's image and the nodes' audit file. And the file tools hold when a path is swapped
for a symlink between their check and their open.

Each case is what a sandboxed ``exec`` can do in the workspace (make links, FIFOs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from beat_schedules.heartbeat import read_heartbeat
from claw_worker.agent.context import read_bootstrap
from claw_worker.config.schema import Config
from claw_worker.memory import store
from claw_worker.memory.index import MemoryIndex
from claw_worker.nodes.audit import DispatchRecord, audit_path
from claw_worker.nodes.audit import record as audit_record
from claw_worker.tools import ToolContext, default_tools
from claw_worker.tools.nodes import _keep_image
from tests.campaign import record
from tests.fixtures.procs import wait_for

SECRET = "sk-outside-" + uuid.uuid4().hex


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    workspace, outside = tmp_path / "ws", tmp_path / "home"
    workspace.mkdir()
    outside.mkdir()
    (outside / "config.json").write_text(f'{{"api_key": "{SECRET}"}}\n')
    return workspace, outside


def finishes(call: Callable[[], Any], within_sec: float = 10.0) -> Any:
    """``call()``'s answer (or its exception); fails, instead of hanging the suite, if it
    blocks."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except Exception as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within_sec)
    assert not thread.is_alive(), f"{call} blocked for {within_sec} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def test_links_out_of_the_workspace_are_not_read_into_the_prompt_memory_or_heartbeat(
    layout: tuple[Path, Path],
) -> None:
    workspace, outside = layout
    secret_file = outside / "config.json"
    for name in ("AGENTS.md", "SOUL.md", "HEARTBEAT.md"):
        (workspace / name).symlink_to(secret_file)
    (workspace / "USER.md").write_text("the user likes tea\n")
    (workspace / "memory" / "notes").mkdir(parents=True)
    (workspace / "memory" / "profile.md").symlink_to(secret_file)
    (workspace / "memory" / "notes" / "2026-01-01.md").symlink_to(secret_file)

    prompt = read_bootstrap(workspace)
    assert prompt == [("USER.md", "the user likes tea")]
    assert read_heartbeat(workspace) is None
    index = MemoryIndex(workspace, db_path=outside.parent / "index.db")
    hits = index.search("api_key")
    assert all(SECRET not in hit.snippet for hit in hits), hits
    # An append would read the old text and write it back inside the workspace: refused.
    with pytest.raises(ValueError, match="not a regular file inside the workspace"):
        store.append(workspace, "profile", "hello")
    assert (workspace / "memory" / "profile.md").is_symlink()
    assert secret_file.read_text() == f'{{"api_key": "{SECRET}"}}\n'
    record("workspace files: links out (prompt, memory, heartbeat)", tried=6, rejected=6)


def test_memory_directory_linked_out_is_not_written_through(layout: tuple[Path, Path]) -> None:
    workspace, outside = layout
    (workspace / "memory").symlink_to(outside)
    with pytest.raises(OSError, match="outside"):
        store.append(workspace, "note", "a note")
    assert sorted(p.name for p in outside.iterdir()) == ["config.json"]


def test_fifos_and_devices_do_not_block_or_flood_the_readers(layout: tuple[Path, Path]) -> None:
    workspace, _outside = layout
    for name in ("AGENTS.md", "HEARTBEAT.md"):
        os.mkfifo(workspace / name)
    (workspace / "SOUL.md").symlink_to("/dev/zero")
    (workspace / "memory").mkdir()
    os.mkfifo(workspace / "memory" / "profile.md")
    os.mkfifo(workspace / "memory" / "project.md")

    assert finishes(lambda: read_bootstrap(workspace)) == []
    assert finishes(lambda: read_heartbeat(workspace)) is None
    index = MemoryIndex(workspace, db_path=workspace.parent / "index.db")
    assert finishes(lambda: index.search("anything")) == []
    with pytest.raises(ValueError, match="not a regular file"):
        finishes(lambda: store.append(workspace, "project", "hello"))
    record("workspace files: FIFOs and devices", tried=5, rejected=5)


def test_node_image_and_audit_do_not_write_through_links(layout: tuple[Path, Path]) -> None:
    workspace, outside = layout
    ctx = ToolContext(workspace=workspace, session_key="test:1", config=Config())
    (workspace / "media").mkdir()
    (workspace / "media" / "nodes").symlink_to(outside)
    answer: dict[str, Any] = {"ok": True, "payload": {"media_type": "image/png", "image": "AAAA"}}
    _keep_image(answer, ctx, "phone")
    assert answer["payload"]["storage"] == "none", answer
    victim = outside / "victim.txt"
    victim.write_text("untouched\n")
    audit_path(workspace).parent.mkdir(parents=True, exist_ok=True)
    audit_path(workspace).symlink_to(victim)
    audit_record(None, workspace, DispatchRecord("phone", "run", "p2p", True, "ok", 3))
    assert sorted(p.name for p in outside.iterdir()) == ["config.json", "victim.txt"]
    assert victim.read_text() == "untouched\n"
    record("workspace files: node media and audit through links", tried=2, rejected=2)


SWAPPER = """
import os, sys, time
ws, target, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
os.chdir(ws)
while time.monotonic() < until:
    os.replace("plain", "f")   # f is a regular file inside the workspace ...
    with open("plain", "w") as fh:
        fh.write("harmless\\n")
    os.symlink(target, "tmp-link")
    os.replace("tmp-link", "f")  # ... then a link out of it
    with open("plain", "w") as fh:
        fh.write("harmless\\n")
"""


def test_a_symlink_swapped_in_after_the_check_is_not_followed(layout: tuple[Path, Path]) -> None:
    """Another process (the agent's exec in a concurrent session) flips a file between a
    regular file and a link to the worker's config while read_file and edit_file run:
    whatever moment the swap lands, nothing outside is read or written."""
    workspace, outside = layout
    secret_file = outside / "config.json"
    (workspace / "plain").write_text("harmless\n")
    (workspace / "f").write_text("harmless\n")
    tools = default_tools(Config())
    ctx = ToolContext(workspace=workspace, session_key="test:1", config=Config())
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(workspace), str(secret_file), "30"]
    )
    results: list[str] = []
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(results) < 2000 and swapper.poll() is None:
            results.append(tools.run("read_file", {"path": "f"}, ctx))
            edit = {"path": "f", "old_string": "harmless", "new_string": "edited"}
            results.append(tools.run("edit_file", edit, ctx))
    finally:
        swapper.kill()
        swapper.wait(timeout=10)
    wait_for(lambda: swapper.poll() is not None, timeout=10, what="swapper gone")
    assert len(results) > 200
    leaks = [r for r in results if SECRET in r]
    assert not leaks
    assert not [r for r in results if " failed: " in r]  # refused cleanly, never a tool crash
    assert secret_file.read_text() == f'{{"api_key": "{SECRET}"}}\n'
    refused = sum(r.startswith("Error:") for r in results)
    record("file tools: symlink swapped in after the check", tried=len(results),
           rejected=refused, escapes=len(leaks))  # fmt: skip
