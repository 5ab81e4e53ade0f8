"""What the bm25 index (``index.py``) and the vectors (``vectors.py``) share: the search hit,
the SQL of the ranking and snippets, and the write transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

SNIPPET = "snippet(chunks, -1, '', '', '…', ?)"  # ? = how many tokens
BM25 = "bm25(chunks, 0.0, 2.0, 1.0)"  # path ignored, a heading weighs twice the body


@dataclass(frozen=True)
class Hit:
    path: str  # relative to the workspace, e.g. memory/notes/2026-01-02.md
    heading: str
    snippet: str
    score: float  # higher is better: negated bm25, or the fused score in hybrid mode


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken at once (no deadlock between two upgraders)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
