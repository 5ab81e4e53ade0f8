"""Memory under damage and odd input: a damaged index file, text that is not plain text."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from claw_worker.agent.context import memory_recall
from claw_worker.config.schema import Config
from claw_worker.memory import store
from claw_worker.memory.index import MemoryIndex, damaged
from claw_worker.tools.base import ToolContext
from claw_worker.tools.registry import default_tools


@pytest.fixture(autouse=True)
def host_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $CLAW_HOME of its own (the index lives in its cache), apart from the workspace."""
    home = tmp_path_factory.mktemp("host")
    monkeypatch.setenv("CLAW_HOME", str(home))
    return home


def _replace(old: bytes, new: bytes) -> Callable[[Path], None]:
    """A damage: bytes of the file replaced in place (a flipped byte, the same length)."""

    def damage(db: Path) -> None:
        data = db.read_bytes()
        assert old in data and len(old) == len(new)
        db.write_bytes(data.replace(old, new, 1))

    return damage


def _undecodable_path(db: Path) -> None:
    # A byte of a stored path flipped to one that is not UTF-8.
    conn = sqlite3.connect(db)
    conn.execute("UPDATE files SET path = CAST(X'6D656DF9' AS TEXT) WHERE path LIKE '%profile%'")
    conn.commit()
    conn.close()


def _schema_format(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[44:48] = (255).to_bytes(4, "big")  # the header's schema format number (1 to 4)
    db.write_bytes(bytes(data))


DAMAGES = {
    # Each of these left memory search "unavailable" for good (recall silently empty), or
    # failed every turn that asked to recall something: the index was never rebuilt.
    "a stored path not UTF-8": _undecodable_path,
    "the schema's text not UTF-8": _replace(b"unicode61", b"unic\xf9de61"),
    "a column name in the schema": _replace(b"sig TEXT", b"s\xf9g TEXT"),
    "an unknown schema format": _schema_format,
}


def _damage(index: MemoryIndex, damage: Callable[[Path], None]) -> None:
    conn = sqlite3.connect(index.db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    conn.close()
    damage(index.db_path)


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_index_is_rebuilt(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    store.append(tmp_path, "profile", "Favourite editor: Helix, with the dark theme.")
    index = MemoryIndex(tmp_path)
    assert index.search("Helix")
    _damage(index, damage)
    hits = MemoryIndex(tmp_path).search("Helix")
    assert [h.path for h in hits] == ["memory/profile.md"]

    _damage(index, damage)
    defaults = Config().agents.defaults
    block = memory_recall(tmp_path, "do you remember my editor? Helix?", defaults)
    assert "Helix" in block and "memory/profile.md" in block


def test_a_busy_or_locked_index_is_not_taken_for_damage(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite3"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError) as locked:
            sqlite3.connect(db, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    finally:
        holder.close()
    assert "locked" in str(locked.value)
    assert not damaged(locked.value)  # reported to the caller; the file is not deleted


def _write(tmp_path: Path, text: str, layer: str = "profile") -> str:
    tools = default_tools(Config())
    ctx = ToolContext(tmp_path, "test:1", Config())
    return tools.run("memory_write", {"layer": layer, "text": text}, ctx)


def test_control_characters_are_not_written_to_memory(tmp_path: Path) -> None:
    # A model (or a pasted terminal log) writes NUL, escape sequences and a bell. Before, they
    # went into profile.md as they were: the file became "binary" to grep and less, a NUL cut
    # the search's snippet there, and the escapes came back into every prompt.
    text = "editor: helix\x00theme: dark\r\ncolour \x1b[31mred\x1b[0m \x07 done\x85."
    assert _write(tmp_path, text) == "Saved to memory/profile.md"
    data = (tmp_path / "memory" / "profile.md").read_bytes()
    assert data.endswith(b"\n\neditor: helix theme: dark\ncolour  [31mred [0m   done .\n")
    hits = MemoryIndex(tmp_path).search("helix")
    assert "theme: dark" in hits[0].snippet
    assert _write(tmp_path, "\x00\x1b\x07") == "Error: not saved: memory text is empty"


def test_a_nul_in_a_hand_written_memory_file_does_not_cut_its_snippet(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "project.md").write_bytes(b"# Project\n\nalpha\x00beta gamma\n")
    hits = MemoryIndex(tmp_path).search("alpha")
    assert hits[0].snippet == "alpha beta gamma"


def test_a_comment_in_a_code_block_is_not_a_heading(tmp_path: Path) -> None:
    # A procedure with a shell snippet: each "# comment" in it was taken for a heading, so
    # the snippet's chunks lost their section ("Deploy") and a heading's double weight went
    # to the comments.
    text = "## Deploy the site\n\n```bash\n# build the image\ndocker build .\n# push it\n```\n"
    assert _write(tmp_path, text, layer="procedures") == "Saved to memory/procedures.md"
    hits = MemoryIndex(tmp_path).search("docker image")
    assert [h.heading for h in hits] == ["Deploy the site"]
    assert "# build the image" in hits[0].snippet and "# push it" in hits[0].snippet


def test_a_long_message_asking_to_recall_is_searched_at_once(tmp_path: Path) -> None:
    # A pasted document with a recall keyword ("之前", "before", is common in Chinese): every
    # distinct word or bigram was checked against all those kept before, so the query took
    # minutes of CPU with the GIL held (100,000 characters: 187 s), all of the worker frozen.
    store.append(tmp_path, "note", "之前决定用 Redis 哨兵")
    rng = random.Random(7)
    text = "之前" + "".join(chr(0x4E00 + rng.randrange(20_000)) for _ in range(100_000))
    started = time.monotonic()
    block = memory_recall(tmp_path, text, Config().agents.defaults)
    assert time.monotonic() - started < 5
    assert "Redis" in block
