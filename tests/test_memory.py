"""Long-term memory: the layered files, the FTS5 index, the tools and recall into the context."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.memory import store
from claw_worker.memory.index import MemoryIndex, chunk_markdown, fts_query
from claw_worker.tools.base import ToolContext
from claw_worker.tools.registry import default_tools
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer

DAY = 86400.0
TOPICS = [
    "grocery list: oat milk, eggs, sourdough bread and tomatoes",
    "weekly sync moved to Thursday afternoon with the design team",
    "the laptop battery drains quickly when the external monitor is attached",
    "booked train tickets for the conference in the spring",
    "the staging database backup job runs every night at two",
    "prefer short answers in the morning, longer explanations in the evening",
    "the garden needs watering twice a week during summer",
]


def seed_notes(workspace: Path, count: int) -> None:
    start = time.time() - 40 * DAY
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        store.append(workspace, "note", f"Note {i}: {topic}.", now=start + i * 3600 * 5)


def test_the_most_relevant_note_ranks_first(tmp_path: Path) -> None:
    seed_notes(tmp_path, 150)
    store.append(
        tmp_path,
        "procedures",
        "To renew the ingress TLS certificate run certbot on the edge host, then reload nginx.",
    )
    hits = MemoryIndex(tmp_path).search("how do I renew the TLS certificate for ingress?", 5)
    assert hits, "expected matches"
    assert hits[0].path == "memory/procedures.md"
    assert "certbot" in hits[0].snippet
    assert hits[0].score > hits[-1].score or len(hits) == 1
    # Dated notes are found too, each note as its own chunk.
    hits = MemoryIndex(tmp_path).search("external monitor battery", 3)
    assert all(h.path.startswith("memory/notes/") and "battery" in h.snippet for h in hits)
    assert len(hits) == 3


def test_incremental_rebuild_on_change_and_delete(tmp_path: Path) -> None:
    index = MemoryIndex(tmp_path)
    store.append(tmp_path, "project", "Project Falcon ships on the first of March.")
    store.append(tmp_path, "note", "Bought a blue umbrella.")
    assert index.refresh() == 3  # MEMORY.md, project.md, today's note
    assert index.refresh() == 0  # nothing changed: nothing re-indexed

    project = tmp_path / "memory" / "project.md"
    project.write_text("# Projects\n\nProject Heron replaced Falcon; ships in June.\n")
    assert index.refresh() == 1
    assert index.search("March", 5) == []
    assert index.search("Heron", 5)[0].path == "memory/project.md"

    note = store.layer_path(tmp_path, "note")
    note.unlink()
    assert index.search("umbrella", 5) == []
    # Another process (here: another index object) sees the same database state.
    assert MemoryIndex(tmp_path).refresh() == 0


def test_corrupt_index_is_rebuilt(tmp_path: Path) -> None:
    store.append(tmp_path, "profile", "The user's name is Ada Lovelace.")
    db = tmp_path / "memory" / ".index.sqlite3"
    db.write_bytes(b"this is not a sqlite database" * 100)
    assert MemoryIndex(tmp_path).search("Ada", 5)[0].path == "memory/profile.md"


@pytest.mark.parametrize(
    "query",
    ['"foo" AND (', "NEAR(a b", "*", "a OR", "-x:y", "'; DROP TABLE chunks; --", '""', "^", " "],
)
def test_weird_queries_never_raise(tmp_path: Path, query: str) -> None:
    store.append(tmp_path, "note", "foo bar baz AND a thing")
    hits = MemoryIndex(tmp_path).search(query, 5)
    assert isinstance(hits, list)
    assert fts_query('"foo" AND (') == '"foo" OR "and"'


def test_chunks_follow_headings_and_size() -> None:
    para = "word " * 150  # ~750 chars
    text = f"# Top\n\nintro\n\n## A\n\n{para}\n\n{para}\n\n## B\n\nshort"
    chunks = chunk_markdown(text)
    assert [h for h, _ in chunks] == ["Top", "A", "A", "B"]
    assert all(len(body) <= 1000 for _, body in chunks)


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    def writer(n: int) -> None:
        for i in range(20):
            store.append(tmp_path, "note", f"writer{n} entry{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = store.layer_path(tmp_path, "note").read_text()
    assert all(f"writer{n} entry{i}\n" in text for n in range(6) for i in range(20))
    assert not [p for p in (tmp_path / "memory" / "notes").iterdir() if p.suffix == ".tmp"]


def _ctx(workspace: Path) -> tuple[Any, ToolContext]:
    config = Config()
    return default_tools(config), ToolContext(workspace, "test:1", config)


def test_memory_tools(tmp_path: Path) -> None:
    tools, ctx = _ctx(tmp_path)
    assert {"memory_search", "memory_write"} <= set(tools.names)
    result = tools.run("memory_write", {"layer": "profile", "text": "Likes jasmine tea."}, ctx)
    assert result == "Saved to memory/profile.md"
    result = tools.run("memory_write", '{"layer": "note", "text": "Parked on level 3."}', ctx)
    assert result.startswith("Saved to memory/notes/") and result.endswith(".md")
    found = tools.run("memory_search", {"query": "jasmine tea"}, ctx)
    assert found.startswith("1. [memory/profile.md") and "jasmine" in found
    assert tools.run("memory_search", {"query": "zebra"}, ctx) == "No memory matches 'zebra'."
    assert "1. " in tools.run("memory_search", {"query": '"level" AND (', "limit": "2"}, ctx)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("memory_write", {"layer": "diary", "text": "x"}, "layer: Input should be"),
        ("memory_write", {"layer": "note"}, "text: Field required"),
        ("memory_write", {"layer": "note", "text": ""}, "text: String should have at least"),
        ("memory_write", {"layer": "note", "text": "   "}, "Error: text is blank"),
        ("memory_search", {}, "query: Field required"),
        ("memory_search", {"query": "x", "limit": 0}, "limit: Input should be greater"),
        ("memory_search", {"query": "x", "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_memory_tool_bad_arguments(tmp_path: Path, name: str, args: Any, expected: str) -> None:
    tools, ctx = _ctx(tmp_path)
    result = tools.run(name, args, ctx)
    assert result.startswith("Error:") and expected in result


def test_recall_keywords_put_memory_into_the_context(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer
) -> None:
    config = Config.model_validate(
        {
            "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["test-model"]}},
            "redis": {"url": redis_server.url},
        }
    )
    store.append(claw_home.workspace, "profile", "Favourite editor: Helix, with the dark theme.")
    seed_notes(claw_home.workspace, 20)
    client: redis.Redis = redis_server.client()
    agent = Agent(config, client)

    agent.handle(
        InboundMessage(
            channel="test", chat_id="1", sender_id="u", text="Do you REMEMBER my favourite editor?"
        )
    )
    system = llm_server.requests[-1]["messages"][0]
    assert system["role"] == "system"
    assert "## Relevant memory" in system["content"]
    assert "Helix" in system["content"] and "memory/profile.md" in system["content"]

    agent.handle(
        InboundMessage(
            channel="test", chat_id="1", sender_id="u", text="What is my favourite editor?"
        )
    )
    assert "Relevant memory" not in llm_server.requests[-1]["messages"][0]["content"]
    assert os.path.exists(claw_home.workspace / "memory" / ".index.sqlite3")
