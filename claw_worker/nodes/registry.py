"""Reading the node registry the ingress keeps (``claw_ingress/nodes.py`` writes it).

A node is online while its last register or heartbeat is younger than its ``ttl_sec``,
both measured on the Redis server's clock. It can be reached p2p when it advertised a URL,
and through the relay while an ingress replica holds its WebSocket
(``claw:conn:nodes:<id>``). The node's own token is read here to be presented to it, and
never shown: :meth:`NodeInfo.public` leaves it out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from claw_worker import constants as k
from claw_worker.nodes.envelope import CAPABILITY


@dataclass(frozen=True)
class NodeInfo:
    id: str
    name: str
    url: str
    capabilities: tuple[str, ...]
    token: str
    ttl_sec: int
    registered_at: float
    seen_ago: float | None  # seconds since its last register/heartbeat
    status: str
    relay: bool  # an ingress replica holds its WebSocket

    @property
    def online(self) -> bool:
        return self.seen_ago is not None and self.seen_ago <= self.ttl_sec

    def supports(self, action: str) -> bool:
        return CAPABILITY.get(action, action) in self.capabilities

    def public(self) -> dict[str, Any]:
        """Everything but the token, for the model and the CLI."""
        return {
            "id": self.id,
            "name": self.name,
            "online": self.online,
            "seen_ago_sec": None if self.seen_ago is None else round(self.seen_ago, 1),
            "ttl_sec": self.ttl_sec,
            "status": self.status,
            "capabilities": list(self.capabilities),
            "modes": [m for m, ok in (("p2p", bool(self.url)), ("relay", self.relay)) if ok],
            "url": self.url,
        }


def _now(pipe_time: tuple[int, int] | list[int]) -> float:
    seconds, micros = pipe_time
    return int(seconds) + int(micros) / 1e6


def _info(raw: str, seen: float | None, now: float, status: str, relay: bool) -> NodeInfo | None:
    try:
        data = json.loads(raw)
        return NodeInfo(
            id=str(data["id"]),
            name=str(data.get("name") or data["id"]),
            url=str(data.get("url") or ""),
            capabilities=tuple(str(c) for c in data.get("capabilities") or ()),
            token=str(data["token"]),
            ttl_sec=int(data["ttl_sec"]),
            registered_at=float(data.get("registered_at") or 0.0),
            seen_ago=None if seen is None else max(0.0, now - seen),
            status=status,
            relay=relay,
        )
    except (ValueError, TypeError, KeyError):
        return None  # not written by this version of the ingress: skipped


def get_node(client: redis.Redis, node_id: str) -> NodeInfo | None:
    with client.pipeline(transaction=False) as pipe:
        pipe.hget(k.NODES, node_id)
        pipe.zscore(k.NODES_SEEN, node_id)
        pipe.hget(k.NODES_STATUS, node_id)
        pipe.exists(k.node_connection_key(node_id))
        pipe.time()
        raw, seen, status, relay, now = pipe.execute()
    if raw is None:
        return None
    return _info(raw, seen, _now(now), status or "", bool(relay))


def list_nodes(client: redis.Redis) -> list[NodeInfo]:
    """Every registered node, online ones first, then by id."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(k.NODES)
        pipe.zrange(k.NODES_SEEN, 0, -1, withscores=True)
        pipe.hgetall(k.NODES_STATUS)
        pipe.time()
        records, seen_list, statuses, now = pipe.execute()
    ids = sorted(records)
    relays = client.mget([k.node_connection_key(i) for i in ids]) if ids else []
    seen = dict(seen_list)
    found = [
        _info(records[i], seen.get(i), _now(now), statuses.get(i, ""), bool(relay))
        for i, relay in zip(ids, relays, strict=True)
    ]
    nodes = [n for n in found if n is not None]
    return sorted(nodes, key=lambda n: (not n.online, n.id))
