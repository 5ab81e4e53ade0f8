"""Every dispatch to a node, audited: one JSON line appended to
``<workspace>/memory/nodes-dispatch-audit.jsonl`` and the figures in ``claw:nodes:stats``.

A line holds when, which session, which node and action, the mode that carried it, the
outcome (``ok``, ``code``) and how long it took; never the node's token, the arguments or
the answer. Each line is one ``write`` on a file opened with ``O_APPEND``, so workers on one
host never interleave lines. Neither the file nor Redis failing fails the dispatch: the
failure is logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from claw_worker import constants as k
from claw_worker.fsutil import open_append
from claw_worker.nodes.stats import ACTION_FIELD

log = logging.getLogger(__name__)

AUDIT_FILE = Path("memory") / "nodes-dispatch-audit.jsonl"


@dataclass(frozen=True)
class DispatchRecord:
    node: str
    action: str
    mode: str  # p2p, relay, none (refused before anything was sent)
    ok: bool
    code: str
    ms: int
    session: str = ""
    message_id: str = ""


def audit_path(workspace: Path) -> Path:
    return workspace / AUDIT_FILE


def record(client: redis.Redis | None, workspace: Path, entry: DispatchRecord) -> None:
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(entry)}
    path = audit_path(workspace)
    try:
        fd = open_append(path, Path(os.path.realpath(workspace)))  # never through a link
        try:
            os.write(fd, (json.dumps(line, ensure_ascii=False) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("nodes audit file not written: %s", exc)
    if client is None:
        return
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(k.NODES_STATS, "total", 1)
            pipe.hincrby(k.NODES_STATS, "ok" if entry.ok else "fail", 1)
            pipe.hincrby(k.NODES_STATS, "ms", entry.ms)
            pipe.hincrby(k.NODES_STATS, ACTION_FIELD + entry.action, 1)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("nodes dispatch figures not updated: %s", exc)
