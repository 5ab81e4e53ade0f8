"""A SQLite FTS5 index over the memory files, ranked with bm25.

Chinese, Japanese and Korean are written without spaces between words, so unicode61 alone
would make a whole run of them one token and "部署" would not find "我们上次讨论了部署方案".
Such runs are indexed as overlapping character bigrams (see ``terms.py``); everything else
is tokenized by unicode61.

The index is derived data, kept per host: ``$CLAW_HOME/cache/memory-index/<digest>.sqlite3``
where the digest is the first 16 hex digits of the sha256 of the resolved workspace path
(see ``default_db_path``). The workspace may be shared by several hosts over NFS or a shared
volume, and SQLite's WAL does not work on a network filesystem; so the memory files stay in
the workspace and each host builds its own index of them on local disk, one per workspace.
An index an older version left in the workspace (``memory/.index.sqlite3`` and its -wal and
-shm files) is ignored, not deleted.

Before every search the index is brought up to date by comparing each file's size, mtime
and inode to what was recorded, so a note written on any host is found from every host. A
corrupt database is deleted and rebuilt rather than repaired. Several processes on a host
may refresh at once: WAL plus a busy timeout lets readers go on while one writer applies
the changes, and the diff is recomputed inside the write transaction so two refreshers agree.

``search(..., mode="hybrid")`` also ranks by meaning: the chunks get vectors from a local
embedding model and the bm25 and cosine rankings are fused (see ``vectors.py``). That needs
the ``embeddings`` extra; without it hybrid falls back to bm25 with one warning, and bm25
mode never imports numpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from claw_worker.config.paths import cache_dir
from claw_worker.fsutil import read_text
from claw_worker.memory import embeddings
from claw_worker.memory.sql import BM25, SNIPPET, Hit, write_transaction
from claw_worker.memory.store import INDEX_FILE, LAYERS, NOTES_DIR, memory_dir
from claw_worker.memory.terms import fts_query, has_cjk, restore, segment

if TYPE_CHECKING:
    from claw_worker.memory import vectors

log = logging.getLogger(__name__)
T = TypeVar("T")
SearchMode = Literal["bm25", "hybrid"]

INDEX_DIR = "memory-index"  # under cache_dir(): one database per workspace
CHUNK_MIN = 500  # paragraphs are merged up to here, so one chunk is a useful snippet...
CHUNK_MAX = 1000  # ...and split before here, so one huge file is not one giant chunk
SNIPPET_TOKENS = 24
CJK_SNIPPET_TOKENS = 48  # one token per character there
BUSY_TIMEOUT_MS = 10_000
MAX_INDEXED_BYTES = 8 * 1024 * 1024  # of one memory file (store.MAX_LAYER_BYTES)
# Hybrid mode: a search embeds new chunks for at most about this long (in groups of this
# many chunks, each committed); a large backlog is worked off over the following searches.
EMBED_BUDGET_SEC = 2.0
EMBED_GROUP_CHUNKS = 64
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")

# user_version 0 (never set) was unicode61 on the raw text, 2 took a "# comment" in a code
# block for a heading; a mismatch re-indexes once.
SCHEMA_VERSION = 3
SCHEMA = (
    "CREATE TABLE files (path TEXT PRIMARY KEY, sig TEXT NOT NULL)",
    "CREATE VIRTUAL TABLE chunks USING fts5("
    " path UNINDEXED, heading, body, tokenize = 'unicode61 remove_diacritics 2')",
)


def chunk_markdown(text: str) -> list[tuple[str, str]]:
    """(heading, body) chunks: one per heading section, paragraphs merged to ~500-1000 chars."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fence = ""  # the fence of the code block the line is in: a "# comment" there is code
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if opened and (not fence or opened.group(1).startswith(fence)):
            fence = "" if fence else opened.group(1)
        match = None if fence else _HEADING.match(line)
        if match:
            sections.append((match.group(2), []))
        else:
            sections[-1][1].append(line)
    chunks: list[tuple[str, str]] = []
    for heading, lines in sections:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip()]
        buf = ""
        for para in paragraphs:
            for piece in _split_long(para):
                if buf and len(buf) + len(piece) + 2 > CHUNK_MAX:
                    chunks.append((heading, buf))
                    buf = ""
                buf = f"{buf}\n\n{piece}" if buf else piece
                if len(buf) >= CHUNK_MIN:
                    chunks.append((heading, buf))
                    buf = ""
        if buf:
            chunks.append((heading, buf))
    return chunks


def _split_long(text: str) -> list[str]:
    pieces = []
    while len(text) > CHUNK_MAX:
        cut = text.rfind(" ", CHUNK_MIN, CHUNK_MAX)
        cut = cut if cut > 0 else CHUNK_MAX
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    return [*pieces, text] if text else pieces


def _signature(st: os.stat_result) -> str:
    # The inode catches an atomic replace that kept the size within one mtime tick.
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def scan(workspace: Path) -> dict[str, str]:
    """{path relative to the workspace: signature} of every indexed file.

    Runs before every search, so it uses one ``scandir`` of the notes folder rather than
    ``Path`` globbing (a year of notes: ~0.5 ms instead of ~5 ms).
    """
    root = memory_dir(workspace)
    found: dict[str, str] = {}
    # Regular files only, never followed: a layer the agent's exec made a link (to the
    # worker's config, say) or a FIFO is not indexed.
    for name in (INDEX_FILE, *LAYERS.values()):
        with contextlib.suppress(OSError):  # a layer not written yet
            st = os.stat(root / name, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                found[f"memory/{name}"] = _signature(st)
    try:
        with os.scandir(root / NOTES_DIR) as entries:
            for entry in entries:
                if entry.name.endswith(".md") and not entry.name.startswith("."):
                    try:
                        if entry.is_file(follow_symlinks=False):
                            found[f"memory/{NOTES_DIR}/{entry.name}"] = _signature(
                                entry.stat(follow_symlinks=False)
                            )
                    except OSError:
                        pass  # removed while scanning
    except OSError:
        pass  # no notes yet
    return found


def default_db_path(workspace: Path) -> Path:
    """This host's index of ``workspace``: two workspaces never share one."""
    digest = hashlib.sha256(str(workspace.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / INDEX_DIR / f"{digest}.sqlite3"


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or recreate them (empty, so the next refresh re-indexes every
    file) when an older version built them; checked again under the lock, so once."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    with write_transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # vectors.py's tables (hybrid mode) hang off the chunk rowids, so they go too.
            for table in ("chunks", "files", "vectors", "vector_files"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# SQLite's result codes for a database that is fine but cannot be used right now; any
# other error (SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_ERROR of a damaged schema: "no such
# column", "unsupported file format", ...) is the file's own, and rebuilding fixes it.
_PASSING = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN",
            "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_NOMEM", "SQLITE_INTERRUPT", "SQLITE_PERM",
            "SQLITE_PROTOCOL")  # fmt: skip


def damaged(exc: Exception) -> bool:
    """Whether an error from the index says its file is damaged (rebuild it), rather than
    busy or out of resources (report it). A flipped byte in a stored text surfaces as an
    undecodable value: an OperationalError without a result code, or a UnicodeDecodeError
    (from the schema's text)."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is None:
        return isinstance(exc, UnicodeDecodeError) or str(exc).startswith("Could not decode")
    return not name.startswith(_PASSING)


class MemoryIndex:
    """The index for one workspace; thread-safe (one connection per thread)."""

    def __init__(
        self,
        workspace: Path,
        *,
        embed_budget_sec: float = EMBED_BUDGET_SEC,
        embed_group_chunks: int = EMBED_GROUP_CHUNKS,
        db_path: Path | None = None,
    ) -> None:
        self.workspace = workspace
        self.embed_budget_sec = embed_budget_sec
        self.embed_group_chunks = embed_group_chunks
        self.db_path = db_path if db_path is not None else default_db_path(workspace)
        self._local = threading.local()
        self._matrix: vectors.Matrix | None = None  # hybrid mode's vectors, loaded on use
        self._matrix_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        self.db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        return conn

    def _drop(self) -> None:
        """Forget a corrupt database: it is rebuilt from the files on the next use."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        with self._matrix_lock:
            self._matrix = None  # its row ids were the old database's

    def _with_rebuild(self, action: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connect())
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            if not damaged(exc):
                raise  # locked, busy, disk full: not the file's fault; the caller reports it
            log.warning("memory index %s is corrupt during %s (%s); rebuilding", self.db_path,
                        action, exc)  # fmt: skip
            self._drop()
            conn = self._connect()
            if action != "refresh":
                self._refresh(conn)  # a search or an embedding needs the files indexed again
            return fn(conn)

    def refresh(self, mode: SearchMode = "bm25") -> int:
        """Re-index the files that changed since last time; returns how many were updated.
        In hybrid mode their new chunks are embedded too."""
        changed = self._with_rebuild("refresh", self._refresh)
        model = _embedder() if mode == "hybrid" else None
        if model is not None:
            from claw_worker.memory import vectors  # numpy: only in hybrid mode

            self._with_rebuild(
                "embed",
                lambda conn: vectors.sync(
                    conn, model, budget_sec=self.embed_budget_sec,
                    group_chunks=self.embed_group_chunks,
                ),
            )  # fmt: skip
        return changed

    def _refresh(self, conn: sqlite3.Connection) -> int:
        current = scan(self.workspace)
        recorded = dict(conn.execute("SELECT path, sig FROM files").fetchall())
        if recorded == current:
            return 0  # the common case: a read-only check, no write lock taken
        with write_transaction(conn):
            # Recomputed under the write lock: another process may have just done the work.
            recorded = dict(conn.execute("SELECT path, sig FROM files").fetchall())
            changed = 0
            within = Path(os.path.realpath(self.workspace))
            for rel in recorded.keys() - current.keys():
                conn.execute("DELETE FROM chunks WHERE path = ?", (rel,))
                conn.execute("DELETE FROM files WHERE path = ?", (rel,))
                changed += 1
            for rel, sig in current.items():
                if recorded.get(rel) == sig:
                    continue
                text = read_text(self.workspace / rel, MAX_INDEXED_BYTES, within)
                if text is None:
                    continue  # gone or replaced since the scan; the next refresh sees it
                conn.execute("DELETE FROM chunks WHERE path = ?", (rel,))
                conn.executemany(
                    "INSERT INTO chunks (path, heading, body) VALUES (?, ?, ?)",
                    [(rel, segment(h), segment(b)) for h, b in chunk_markdown(text)],
                )
                conn.execute("INSERT OR REPLACE INTO files (path, sig) VALUES (?, ?)", (rel, sig))
                changed += 1
        return changed

    def search(
        self, query: str, limit: int = 5, *, refresh: bool = True, mode: SearchMode = "bm25"
    ) -> list[Hit]:
        match = fts_query(query)
        if not match or limit < 1:
            return []
        model = _embedder() if mode == "hybrid" else None
        if refresh:
            self.refresh("bm25" if model is None else "hybrid")

        tokens = CJK_SNIPPET_TOKENS if has_cjk(query) else SNIPPET_TOKENS
        if model is not None:
            return self._with_rebuild(
                "search", lambda conn: self._hybrid(conn, query, match, limit, tokens, model)
            )

        def run(conn: sqlite3.Connection) -> list[Hit]:
            rows = conn.execute(
                f"SELECT path, heading, {SNIPPET}, {BM25} AS rank"
                " FROM chunks WHERE chunks MATCH ? ORDER BY rank LIMIT ?",
                (tokens, match, limit),
            ).fetchall()
            return [Hit(p, restore(h), restore(s), -float(r)) for p, h, s, r in rows]

        return self._with_rebuild("search", run)

    def _hybrid(
        self, conn: sqlite3.Connection, query: str, match: str, limit: int, tokens: int,
        model: embeddings.Embedder,
    ) -> list[Hit]:  # fmt: skip
        from claw_worker.memory import vectors

        with self._matrix_lock:
            if self._matrix is None:
                self._matrix = vectors.Matrix()
        return vectors.search(conn, self._matrix, model, query, match, limit, tokens)


def _embedder() -> embeddings.Embedder | None:
    try:
        return embeddings.model()
    except embeddings.EmbeddingsUnavailable:
        return None  # model() logged why, once; bm25 serves the turn


_indexes: dict[tuple[Path, Path], MemoryIndex] = {}
_indexes_lock = threading.Lock()


def index_for(workspace: Path) -> MemoryIndex:
    """One shared ``MemoryIndex`` per workspace in this process (connections are reused).

    Keyed by the database path too, so a changed $CLAW_HOME (tests) gets its own index.
    """
    resolved = workspace.resolve()
    key = (resolved, default_db_path(resolved))
    with _indexes_lock:
        found = _indexes.get(key)
        if found is None:
            found = _indexes[key] = MemoryIndex(resolved, db_path=key[1])
        return found


def search(workspace: Path, query: str, limit: int = 5) -> list[Hit]:
    return index_for(workspace).search(query, limit)
