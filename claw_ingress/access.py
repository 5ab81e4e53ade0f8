"""Who may talk to the agent on a chat channel: ``allow_from``, ``dm_policy`` and pairing.

Checked before anything else happens to a channel's message (slash commands included).
``open`` lets everyone in; ``allowlist`` only the ids in ``allow_from``; ``pairing`` (the
default) also lets in senders an operator approved: an unknown sender is sent a one-time
code (valid ``PAIRING_TTL_SEC``, one per sender at a time, sent once) and the operator runs
``clawctl pairing approve CODE``. Codes are given in private chats only: an unknown sender
in a group (an adapter sets ``metadata["group"]``) is refused without one. A refused sender
is logged, never answered by the agent.

Keys (constants.py): ``claw:allowed:<channel>`` (SET of approved sender ids),
``claw:pairing:codes`` (HASH code -> request), ``claw:pairing:sender:<channel>:<sender>``
(the sender's pending code, with the TTL).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from claw_worker import constants as k
from claw_worker.config.channels import ChannelConfig

log = structlog.get_logger(__name__)

PAIRING_TTL_SEC = 3600
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud or typed
CODE_LENGTH = 8


@dataclass(frozen=True)
class Decision:
    allowed: bool
    pairing_code: str = ""  # a new code to send to the sender (pairing, first contact)
    reason: str = ""


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


# KEYS: sender's pending code, codes hash   ARGV: code, request JSON, ttl_sec
# A sender gets one code at a time: returns the new code, or '' when one is still pending.
_NEW_CODE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return '' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return ARGV[1]
"""


def admitted_by_config(config: ChannelConfig, sender_id: str) -> bool:
    """Whether the config alone lets ``sender_id`` in (no lookup): ``open``, or listed in
    ``allow_from``."""
    return config.dm_policy == "open" or bool(sender_id and sender_id in config.allow_from)


async def check(
    client: aioredis.Redis,
    channel: str,
    config: ChannelConfig,
    sender_id: str,
    chat_id: str,
    *,
    sender_name: str = "",
    in_group: bool = False,
) -> Decision:
    if admitted_by_config(config, sender_id):
        return Decision(True)
    if config.dm_policy == "allowlist" or not sender_id:
        return Decision(False, reason="not in allow_from")
    if await client.sismember(k.allowed_senders_key(channel), sender_id):
        return Decision(True)
    if in_group:  # a code posted there is everyone's to read, and anyone could ask for one
        return Decision(False, reason="not paired (codes are sent in private chats only)")
    request = json.dumps(
        {"channel": channel, "sender_id": sender_id, "chat_id": chat_id,
         "sender_name": sender_name[:100], "requested_at": time.time()}
    )  # fmt: skip
    code = await client.eval(  # type: ignore[misc]
        _NEW_CODE, 2, k.pairing_sender_key(channel, sender_id), k.PAIRING_CODES,
        new_code(), request, PAIRING_TTL_SEC,
    )  # fmt: skip
    return Decision(False, pairing_code=str(code or ""), reason="not paired")


def pairing_text(code: str) -> str:
    return (
        f"This bot only answers people its operator approved. Your pairing code: {code}\n"
        f"Ask the operator to run: clawctl pairing approve {code}"
    )
