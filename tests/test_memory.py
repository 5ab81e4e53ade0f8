"""Long-term memory: the layered files, the FTS5 index, the tools and recall into the context."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from claw_worker.agent import Agent
from claw_worker.agent.context import memory_recall
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.memory import store
from claw_worker.memory.index import (
    SCHEMA_VERSION,
    MemoryIndex,
    chunk_markdown,
    default_db_path,
    index_for,
    scan,
)
from claw_worker.memory.terms import fts_query, restore, segment
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
TOPICS_ZH = [
    "周末去超市买了牛奶、鸡蛋和面包，顺便给阳台的花浇了水",
    "周会改到周四下午，和设计团队一起评审新版首页",
    "笔记本接外接显示器时电池掉得很快，考虑换个 USB-C 扩展坞",
    "订好了去杭州开会的高铁票，周五早上八点出发",
    "Redis 内存占用偏高，把 Redis 的 maxmemory 调到 4GB，淘汰策略改成 allkeys-lru",
    "用户喜欢简短的回答，技术细节可以展开讲",
    "预算表要在月底前交给财务，记得附上发票",
]
DEPLOY = "我们上次讨论了部署方案：先在 staging 用 Redis 哨兵模式跑一周，再切生产流量。"


def seed_notes(workspace: Path, count: int) -> None:
    start = time.time() - 40 * DAY
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        store.append(workspace, "note", f"Note {i}: {topic}.", now=start + i * 3600 * 5)


def seed_notes_zh(workspace: Path, count: int) -> None:
    start = time.time() - 40 * DAY
    for i in range(count):
        topic = TOPICS_ZH[i % len(TOPICS_ZH)]
        store.append(workspace, "note", f"第 {i} 条：{topic}。", now=start + i * 3600 * 5)


@pytest.fixture(autouse=True)
def host_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $CLAW_HOME of its own for every test, apart from the workspace (``tmp_path``): the
    index goes to its cache, never to the real ~/.claw. ``claw_home`` overrides it."""
    home = tmp_path_factory.mktemp("host")
    monkeypatch.setenv("CLAW_HOME", str(home))
    return home


@pytest.fixture
def zh_workspace(tmp_path: Path) -> Path:
    """Chinese notes with English mixed in, plus the ones the searches below look for."""
    seed_notes_zh(tmp_path, 70)
    store.append(tmp_path, "note", DEPLOY)
    store.append(tmp_path, "profile", "家里的猫叫年糕，三岁，最爱吃鸡胸肉。")
    store.append(
        tmp_path,
        "procedures",
        "## 数据库备份\n\n备份脚本每晚两点运行；备份文件保留三十天，恢复前先校验备份。",
    )
    store.append(tmp_path, "project", "新版官网下个月上线，上线前还要做一次备份演练。")
    return tmp_path


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("上次", DEPLOY, id="two-chars"),  # one bigram
        pytest.param("猫", "家里的猫叫年糕", id="one-char"),  # a prefix query over bigrams
        pytest.param("部署方案", DEPLOY, id="four-chars"),  # three bigrams, all in the note
        pytest.param("哨兵模式", DEPLOY, id="four-chars-rare"),
        pytest.param("Redis 部署", DEPLOY, id="mixed"),  # beats the notes saying Redis twice
        pytest.param("年糕最爱吃什么？", "家里的猫叫年糕", id="question"),  # not the wording
    ],
)
def test_chinese_queries_find_the_note(zh_workspace: Path, query: str, expected: str) -> None:
    hits = MemoryIndex(zh_workspace).search(query, 3)
    assert hits, f"no match for {query!r}"
    assert expected in hits[0].snippet  # the original text, not the indexed bigrams
    assert "\u200b" not in hits[0].snippet


def test_chinese_ranking_and_original_text(zh_workspace: Path) -> None:
    hits = MemoryIndex(zh_workspace).search("备份", 5)
    # A section about backups (the heading and three mentions) above a passing mention.
    assert [h.path for h in hits[:2]] == ["memory/procedures.md", "memory/project.md"]
    assert hits[0].heading == "数据库备份" and hits[0].score > hits[1].score
    assert hits[0].snippet == "备份脚本每晚两点运行；备份文件保留三十天，恢复前先校验备份。"
    # Notes about other things do not match at all.
    assert not any("超市" in h.snippet for h in hits)


@pytest.mark.parametrize(
    ("text", "query"),
    [
        pytest.param("東京タワーの近くで打ち合わせ、来週の金曜日。", "タワー", id="japanese"),
        pytest.param("배포 일정은 다음 주 화요일로 확정되었다.", "일정", id="korean"),
        pytest.param("Mixed 中英文 text, 𠮷野家 lunch 々 and 〇.", "𠮷野家", id="astral"),
    ],
)
def test_other_cjk_scripts_and_round_trip(tmp_path: Path, text: str, query: str) -> None:
    assert restore(segment(text)) == text
    store.append(tmp_path, "note", text)
    hits = MemoryIndex(tmp_path).search(query, 1)
    assert hits and hits[0].snippet == text


def test_old_index_is_rebuilt_once(tmp_path: Path) -> None:
    """An index written by the unicode61-only version, up to date with the files: the
    upgrade re-indexes it on first use, and only then."""
    store.append(tmp_path, "note", DEPLOY)
    db = MemoryIndex(tmp_path).db_path
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executescript(
            "CREATE TABLE files (path TEXT PRIMARY KEY, sig TEXT NOT NULL);"
            "CREATE VIRTUAL TABLE chunks USING fts5(path UNINDEXED, heading, body,"
            " tokenize = 'unicode61 remove_diacritics 2');"
        )
        for rel, sig in scan(tmp_path).items():
            text = (tmp_path / rel).read_text(encoding="utf-8")
            conn.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?)",
                [(rel, heading, body) for heading, body in chunk_markdown(text)],
            )
            conn.execute("INSERT INTO files VALUES (?, ?)", (rel, sig))

    hits = MemoryIndex(tmp_path).search("部署", 5)
    assert [h.snippet for h in hits] == [DEPLOY]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert MemoryIndex(tmp_path).refresh() == 0  # a new connection does not rebuild again


def test_chinese_recall_keywords_add_the_note(zh_workspace: Path) -> None:
    defaults = Config().agents.defaults
    block = memory_recall(zh_workspace, "上次说的部署方案是什么来着？", defaults)
    assert block.startswith("## Relevant memory")
    assert DEPLOY in block.splitlines()[2]  # the first passage
    assert memory_recall(zh_workspace, "部署方案是什么？", defaults) == ""  # no keyword


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
    db = MemoryIndex(tmp_path).db_path
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a sqlite database" * 100)
    assert MemoryIndex(tmp_path).search("Ada", 5)[0].path == "memory/profile.md"


@pytest.mark.parametrize(
    "query",
    [
        *['"foo" AND (', "NEAR(a b", "*", "a OR", "-x:y", "'; DROP TABLE chunks; --", '""', "^"],
        *[" ", '"部署" AND (', "上*", "NEAR(部署 方案", "“部署”：", "\u200b", "。"],
    ],
)
def test_weird_queries_never_raise(tmp_path: Path, query: str) -> None:
    store.append(tmp_path, "note", "foo bar baz AND a thing，部署方案")
    hits = MemoryIndex(tmp_path).search(query, 5)
    assert isinstance(hits, list)
    assert fts_query('"foo" AND (') == '"foo" OR "and"'
    assert fts_query('Redis部署" AND (上*') == '"redis" OR "部署" OR "and" OR "上"*'


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


def test_an_append_keeps_the_bytes_of_a_file_edited_in_another_encoding(tmp_path: Path) -> None:
    # A profile written by hand in Latin-1 (é is the byte 0xE9, not UTF-8). Before, an
    # append decoded it with errors="replace" and wrote it back: every such byte became
    # U+FFFD for good.
    profile = store.layer_path(tmp_path, "profile")
    profile.parent.mkdir(parents=True)
    hand_written = "# Profile\n\nName: Renée, owns a café\n".encode("latin-1")
    profile.write_bytes(hand_written)
    tools, ctx = _ctx(tmp_path)

    assert tools.run("memory_write", {"layer": "profile", "text": "Likes thé vert."}, ctx) == (
        "Saved to memory/profile.md"
    )

    data = profile.read_bytes()
    assert data.startswith(hand_written.rstrip(b"\n") + b"\n\n## ")
    assert data.endswith("\n\nLikes thé vert.\n".encode())
    assert "\ufffd".encode() not in data
    found = tools.run("memory_search", {"query": "vert"}, ctx)
    assert found.startswith("1. [memory/profile.md") and "Likes thé vert" in found


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
    assert os.path.exists(claw_home.path / "cache" / "memory-index")
    assert os.path.exists(default_db_path(claw_home.workspace))
    assert not list((claw_home.workspace / "memory").glob("*.sqlite3*"))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_each_host_keeps_its_own_index_of_the_shared_workspace(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workspace may be shared (NFS) where SQLite's WAL does not work: the index is in
    each host's $CLAW_HOME/cache, built there from the shared memory files."""
    shared = tmp_path / "shared"
    legacy = shared / "memory" / ".index.sqlite3"  # where an older version kept it
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"an index left by an older version")
    host_a, host_b = tmp_path_factory.mktemp("host-a"), tmp_path_factory.mktemp("host-b")

    monkeypatch.setenv("CLAW_HOME", str(host_a))
    store.append(shared, "note", "Host A saw the zeppelin over the harbour.")
    on_a = index_for(shared)
    today = str(store.layer_path(shared, "note").relative_to(shared))
    assert [h.path for h in on_a.search("zeppelin", 5)] == [today]
    digest = hashlib.sha256(str(shared.resolve()).encode()).hexdigest()[:16]
    assert on_a.db_path == host_a / "cache" / "memory-index" / f"{digest}.sqlite3"
    assert on_a.db_path.is_file()
    assert on_a.db_path.parent.stat().st_mode & 0o777 == 0o700
    with contextlib.closing(sqlite3.connect(on_a.db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # local disk now

    monkeypatch.setenv("CLAW_HOME", str(host_b))
    on_b = index_for(shared)
    assert on_b is not on_a
    assert on_b.db_path == host_b / "cache" / "memory-index" / f"{digest}.sqlite3"
    assert "zeppelin" in on_b.search("zeppelin", 1)[0].snippet  # A's note, built on B
    store.append(shared, "note", "Host B booked the kayak for Sunday.")
    assert "kayak" in on_b.search("kayak", 1)[0].snippet
    # Fresh: A's index, searched before B wrote, picks up B's note on its next search.
    assert "kayak" in on_a.search("kayak", 1)[0].snippet
    assert "kayak" in MemoryIndex(shared).search("kayak", 1)[0].snippet  # a new process on B

    # Another workspace on the same host gets another database.
    other = tmp_path / "other"
    store.append(other, "note", "Nothing about boats here.")
    assert MemoryIndex(other).db_path.parent == on_b.db_path.parent
    assert MemoryIndex(other).db_path != on_b.db_path
    assert MemoryIndex(other).search("kayak", 5) == []

    # Nothing but the memory files in the workspace; the old index is ignored, not deleted.
    assert not {f for f in _files(shared) if ".sqlite3" in f} - {"memory/.index.sqlite3"}
    assert legacy.read_bytes() == b"an index left by an older version"
    assert {f.partition(".sqlite3")[0] for f in _files(host_a)} == {f"cache/memory-index/{digest}"}
