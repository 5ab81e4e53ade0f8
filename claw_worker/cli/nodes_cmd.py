"""``clawctl nodes list``: the remote devices registered with the gateway (``claw-node``).

Read from the registry in Redis (``claw_worker/nodes/registry.py``); a node's own token is
shown masked, never whole.
"""

from __future__ import annotations

import json

import click
import redis

from claw_worker.cli._common import load
from claw_worker.redis_conn import client, redis_url


def _redis() -> redis.Redis:
    conn = client(redis_url(load()), socket_timeout=5, socket_connect_timeout=2)
    conn.ping()  # one clear error now rather than half an answer
    return conn


@click.group()
def nodes() -> None:
    """Remote devices (nodes) registered with the gateway."""


@nodes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Every node's fields, as JSON.")
def list_cmd(as_json: bool) -> None:
    """Every registered node: id, name, online or offline, last seen, capabilities, how it
    can be reached (p2p, relay), its token masked."""
    from claw_worker.config.store import mask_secret
    from claw_worker.nodes.registry import list_nodes

    found = list_nodes(_redis())
    if as_json:
        click.echo(json.dumps([{**n.public(), "token": mask_secret(n.token)} for n in found],
                              indent=2, ensure_ascii=False))  # fmt: skip
        return
    if not found:
        click.echo("no nodes registered; start one with `claw-node --gateway URL --id NAME`")
        return
    table = [("ID", "NAME", "STATE", "SEEN", "CAPABILITIES", "MODES", "TOKEN", "URL")]
    for n in found:
        seen = "-" if n.seen_ago is None else f"{n.seen_ago:.0f}s ago"
        info = n.public()
        table.append((n.id, n.name, "online" if n.online else "offline", seen,
                      ",".join(n.capabilities) or "-", ",".join(info["modes"]) or "-",
                      mask_secret(n.token), n.url or "-"))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
