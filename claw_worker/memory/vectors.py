"""Chunk vectors for hybrid memory search, kept in the index database beside the FTS table.

``vectors`` holds one float32 vector per chunk, keyed by the chunk's rowid, with a hash of
the text it was made from; ``vector_files`` records which signature of each file its
vectors belong to. A sync compares that to ``files`` (as cheap as the freshness check), and
only the chunks of files that changed are looked at: a chunk whose text already has a
vector (an append leaves a day file's earlier notes as they were) reuses it, the rest are
embedded. The embedding runs outside the write lock; each file's vectors are then stored
only if the file was not re-indexed meanwhile, so several processes may sync at once.

Ranking is reciprocal-rank fusion (Cormack et al., SIGIR 2009): a chunk scores
``sum(1 / (RRF_K + rank))`` over the bm25 and the cosine rankings it appears in.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Sequence

import numpy as np

from claw_worker.memory.embeddings import DIM, Embedder
from claw_worker.memory.sql import BM25, SNIPPET, Hit, write_transaction
from claw_worker.memory.terms import has_cjk, restore

RRF_K = 60  # the paper's constant: damps the head of each list so neither ranking dominates
DEPTH = 50  # candidates taken from each ranking before fusing
MAX_VARIABLES = 500  # per IN (...) list: old SQLite builds allow 999
# Below this cosine a chunk is no semantic match (all-MiniLM-L6-v2: unrelated sentences
# ~0.0 ± 0.15, paraphrases 0.5+), so a query about nothing in memory still finds nothing.
MIN_COSINE = 0.2
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, hash BLOB NOT NULL,"
    " vec BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS vectors_hash ON vectors (hash)",
    "CREATE TABLE IF NOT EXISTS vector_files (path TEXT PRIMARY KEY, sig TEXT NOT NULL)",
)


def _ensure(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:  # a no-op, without a write lock, once they exist
        conn.execute(statement)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def sync(
    conn: sqlite3.Connection,
    model: Embedder,
    *,
    budget_sec: float | None = None,
    group_chunks: int = 64,
) -> int:
    """Give the chunks of changed files their vectors; returns how many were embedded.

    Files are embedded in groups of about ``group_chunks`` chunks, each committed; after
    ``budget_sec`` no new group is started, so the first hybrid search over a large memory
    (minutes of embedding) does not hold its turn: it ranks with the vectors made so far,
    and later searches carry on where it stopped."""
    deadline = None if budget_sec is None else time.monotonic() + budget_sec
    _ensure(conn)
    conn.execute("BEGIN")  # one snapshot for the reads
    try:
        files = dict(conn.execute("SELECT path, sig FROM files").fetchall())
        done = dict(conn.execute("SELECT path, sig FROM vector_files").fetchall())
        stale = {p: s for p, s in files.items() if done.get(p) != s}
        chunks: dict[str, list[tuple[int, str]]] = {path: [] for path in stale}
        paths = list(stale)
        for start in range(0, len(paths), MAX_VARIABLES):
            batch = paths[start : start + MAX_VARIABLES]
            for rowid, path, heading, body in conn.execute(
                "SELECT rowid, path, heading, body FROM chunks"
                f" WHERE path IN ({','.join('?' * len(batch))})", batch,
            ):  # fmt: skip
                chunks[path].append((rowid, f"{restore(heading)}\n{restore(body)}".strip()))
    finally:
        conn.execute("COMMIT")
    if files == done:
        return 0
    embedded = 0
    for number, group in enumerate(_groups(paths, chunks, group_chunks)):
        if number and deadline is not None and time.monotonic() > deadline:
            break  # the rest on a later search (each search does at least one group)
        sigs = {p: stale[p] for p in group}
        embedded += _store(conn, model, sigs, [(p, *c) for p in group for c in chunks[p]])
    with write_transaction(conn):
        gone = [(p,) for p in done.keys() - files.keys()]
        conn.executemany("DELETE FROM vector_files WHERE path = ?", gone)
        conn.execute("DELETE FROM vectors WHERE id NOT IN (SELECT rowid FROM chunks)")
    return embedded


def _groups(
    paths: list[str], chunks: dict[str, list[tuple[int, str]]], size: int
) -> list[list[str]]:
    """Consecutive files with about ``size`` chunks between them (a bigger file alone)."""
    groups: list[list[str]] = [[]]
    count = 0
    for path in paths:
        if groups[-1] and count + len(chunks[path]) > size:
            groups.append([])
            count = 0
        groups[-1].append(path)
        count += len(chunks[path])
    return [g for g in groups if g]


def _store(
    conn: sqlite3.Connection, model: Embedder, sigs: dict[str, str],
    chunks: list[tuple[str, int, str]],
) -> int:  # fmt: skip
    """Embed (outside the lock) and store the vectors of some files' chunks, as (path, rowid,
    text); a file re-indexed meanwhile is skipped: its rowids are no longer these."""
    hashes = [_digest(text) for _, _, text in chunks]
    known = _known(conn, hashes)
    todo = [i for i, h in enumerate(hashes) if h not in known]
    for i, vec in zip(todo, model.embed([chunks[i][2] for i in todo]), strict=True):
        known[hashes[i]] = vec.tobytes()
    with write_transaction(conn):
        now = dict(conn.execute("SELECT path, sig FROM files").fetchall())
        current = {p for p, s in sigs.items() if now.get(p) == s}
        conn.executemany(
            "INSERT OR REPLACE INTO vectors (id, hash, vec) VALUES (?, ?, ?)",
            [(rowid, h, known[h]) for (path, rowid, _), h in zip(chunks, hashes, strict=True)
             if path in current],
        )  # fmt: skip
        conn.executemany(
            "INSERT OR REPLACE INTO vector_files (path, sig) VALUES (?, ?)",
            [(p, sigs[p]) for p in current],
        )
    return len(todo)


def _known(conn: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
    """{hash: vector} of the texts that already have one."""
    known: dict[bytes, bytes] = {}
    unique = list(dict.fromkeys(hashes))
    for start in range(0, len(unique), MAX_VARIABLES):
        batch = unique[start : start + MAX_VARIABLES]
        marks = ",".join("?" * len(batch))
        known.update(conn.execute(f"SELECT hash, vec FROM vectors WHERE hash IN ({marks})", batch))
    return known


class Matrix:
    """All chunk vectors as one array, reloaded only when ``vector_files`` changed; one per
    index, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: dict[str, str] | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._vecs = np.zeros((0, DIM), dtype=np.float32)

    def nearest(self, conn: sqlite3.Connection, query: np.ndarray, n: int) -> list[int]:
        """Rowids of the ``n`` chunks most similar to ``query``, above ``MIN_COSINE``."""
        _ensure(conn)
        key = dict(conn.execute("SELECT path, sig FROM vector_files").fetchall())
        with self._lock:
            if key != self._key:
                rows = conn.execute("SELECT id, vec FROM vectors").fetchall()
                self._ids = np.array([r[0] for r in rows], dtype=np.int64)
                self._vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                self._vecs = self._vecs.reshape(len(rows), DIM)
                self._key = key
            ids, vecs = self._ids, self._vecs
        scores = vecs @ query  # unit vectors: the dot product is the cosine
        top = np.argsort(-scores)[:n]
        return [int(ids[i]) for i in top if scores[i] >= MIN_COSINE]


def fuse(rankings: Sequence[Sequence[int]]) -> list[tuple[int, float]]:
    """(rowid, score) best first, by reciprocal-rank fusion of the given rankings."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, rowid in enumerate(ranking, 1):
            scores[rowid] = scores.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def search(
    conn: sqlite3.Connection, matrix: Matrix, model: Embedder, query: str, match: str,
    limit: int, tokens: int,
) -> list[Hit]:  # fmt: skip
    """The hybrid ranking: bm25's and the cosine top ``DEPTH``, fused; ``match`` is the FTS
    query and ``tokens`` the snippet length, as in bm25 mode."""
    lexical = [
        rowid
        for (rowid,) in conn.execute(
            f"SELECT rowid FROM chunks WHERE chunks MATCH ? ORDER BY {BM25} LIMIT ?",
            (match, DEPTH),
        )
    ]
    semantic = matrix.nearest(conn, model.embed([query])[0], DEPTH)
    fused = fuse([lexical, semantic])[:limit]
    marks = ",".join("?" * len(fused))
    ids = [rowid for rowid, _ in fused]
    found = {  # snippets for the few hits only: they cost more than the ranking
        rowid: (path, heading, snippet)
        for rowid, path, heading, snippet in conn.execute(
            f"SELECT rowid, path, heading, {SNIPPET} FROM chunks"
            f" WHERE chunks MATCH ? AND rowid IN ({marks})",
            (tokens, match, *ids),
        )
    }
    rest = [rowid for rowid in ids if rowid not in found]
    if rest:  # found by meaning alone: no matched words to centre a snippet on
        marks = ",".join("?" * len(rest))
        rows = conn.execute(
            f"SELECT rowid, path, heading, body FROM chunks WHERE rowid IN ({marks})", rest
        ).fetchall()
        found.update((r, (p, h, _lead(restore(b), tokens))) for r, p, h, b in rows)
    return [
        Hit(found[rowid][0], restore(found[rowid][1]), restore(found[rowid][2]), score)
        for rowid, score in fused
        if rowid in found  # a chunk dropped since the vectors were last synced
    ]


def _lead(text: str, tokens: int) -> str:
    """The start of a chunk, about as long as an FTS snippet of ``tokens`` tokens."""
    if has_cjk(text):
        return text[:tokens] + ("…" if len(text) > tokens else "")
    words = text.split()
    return " ".join(words[:tokens]) + ("…" if len(words) > tokens else "")
