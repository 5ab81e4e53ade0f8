"""``clawctl pairing list|approve CODE|revoke CHANNEL SENDER``: who may talk to the agent.

With a channel's ``dm_policy`` at ``pairing`` (the default), an unknown sender is sent a
one-time code; approving the code lets that sender in on that channel (kept in Redis,
fleet-wide). See ``claw_ingress/access.py`` for the other side.
"""

from __future__ import annotations

import json
import time

import click
import redis

from claw_worker import constants as k
from claw_worker.cli._common import CliError, load
from claw_worker.config.channels import ChannelsConfig
from claw_worker.redis_conn import client, redis_url

CHANNEL_NAMES = list(ChannelsConfig.model_fields)


def _redis() -> redis.Redis:
    conn = client(redis_url(load()), socket_timeout=5, socket_connect_timeout=2)
    conn.ping()  # a clear error now rather than half a listing
    return conn


def _pending(conn: redis.Redis) -> list[tuple[str, dict[str, object]]]:
    """Codes still valid (a code expires with its sender's pending mark), oldest first."""
    found = []
    for code, raw in conn.hgetall(k.PAIRING_CODES).items():
        request = json.loads(raw)
        live = conn.get(k.pairing_sender_key(str(request["channel"]), str(request["sender_id"])))
        if live == code:
            found.append((code, request))
        else:
            conn.hdel(k.PAIRING_CODES, code)  # expired: forget it
    return sorted(found, key=lambda item: float(item[1].get("requested_at") or 0))


@click.group()
def pairing() -> None:
    """Approve or revoke chat senders (channels with dm_policy "pairing")."""


@pairing.command("list")
def list_cmd() -> None:
    """Pending pairing codes, and the senders approved on each channel."""
    conn = _redis()
    pending = _pending(conn)
    click.echo("pending:" if pending else "pending: none")
    for code, request in pending:
        age = time.time() - float(request.get("requested_at") or time.time())
        name = f" ({request['sender_name']})" if request.get("sender_name") else ""
        click.echo(f"  {code}  {request['channel']}:{request['sender_id']}{name}, "
                   f"asked {age / 60:.0f} min ago")  # fmt: skip
    for channel in CHANNEL_NAMES:
        senders = sorted(conn.smembers(k.allowed_senders_key(channel)))
        if senders:
            click.echo(f"approved on {channel}: {', '.join(senders)}")


@pairing.command("approve")
@click.argument("code")
def approve_cmd(code: str) -> None:
    """Let in the sender who was given CODE."""
    code = code.strip().upper()
    if not code:
        raise CliError("the pairing code is empty: give the code the sender was sent "
                       "(`clawctl pairing list` shows the pending ones)")  # fmt: skip
    conn = _redis()
    found = dict(_pending(conn)).get(code)
    if found is None:
        raise CliError(f"no pending pairing code {code} (codes expire after an hour); "
                       "`clawctl pairing list` shows the pending ones")  # fmt: skip
    channel, sender = str(found["channel"]), str(found["sender_id"])
    with conn.pipeline(transaction=True) as pipe:
        pipe.sadd(k.allowed_senders_key(channel), sender)
        pipe.hdel(k.PAIRING_CODES, code)
        pipe.delete(k.pairing_sender_key(channel, sender))
        pipe.execute()
    click.echo(f"approved {channel}:{sender}; their next message reaches the agent")


@pairing.command("revoke")
@click.argument("channel", type=click.Choice(CHANNEL_NAMES))
@click.argument("sender_id")
def revoke_cmd(channel: str, sender_id: str) -> None:
    """Take back a sender's approval on CHANNEL."""
    conn = _redis()
    if not conn.srem(k.allowed_senders_key(channel), sender_id):
        raise CliError(f"{channel}:{sender_id} was not approved "
                       "(senders in allow_from are changed with `clawctl config set`)")  # fmt: skip
    click.echo(f"revoked {channel}:{sender_id}")
