"""``clawctl pairing list|approve|revoke`` against the codes the ingress hands out."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from claw_ingress import access
from claw_worker import constants as k
from claw_worker.config.channels import ChannelConfig
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer


def ask_for_code(server: RedisServer, sender: str) -> str:
    async def run() -> str:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            decision = await access.check(client, "telegram", ChannelConfig(), sender, "c1",
                                          sender_name="Ann")  # fmt: skip
            return decision.pairing_code
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_pairing_list_approve_and_revoke(claw_home: ClawHome, redis_server: RedisServer) -> None:
    claw_home.write_config({"redis": {"url": redis_server.url}})
    code = ask_for_code(redis_server, "1001")
    listed = claw_home.clawctl("pairing", "list")
    assert listed.returncode == 0 and f"{code}  telegram:1001 (Ann)" in listed.stdout

    wrong = claw_home.clawctl("pairing", "approve", "NOPE2345")
    assert wrong.returncode == 1 and "no pending pairing code NOPE2345" in wrong.stderr
    approved = claw_home.clawctl("pairing", "approve", code.lower())  # case does not matter
    assert approved.returncode == 0 and "approved telegram:1001" in approved.stdout
    client = redis_server.client()
    assert client.sismember(k.allowed_senders_key("telegram"), "1001")
    assert "approved on telegram: 1001" in claw_home.clawctl("pairing", "list").stdout
    assert claw_home.clawctl("pairing", "approve", code).returncode == 1  # used up

    assert claw_home.clawctl("pairing", "revoke", "telegram", "1001").returncode == 0
    assert not client.sismember(k.allowed_senders_key("telegram"), "1001")
    again = claw_home.clawctl("pairing", "revoke", "telegram", "1001")
    assert again.returncode == 1 and "was not approved" in again.stderr
    bad = claw_home.clawctl("pairing", "revoke", "pigeon", "1")
    assert bad.returncode == 2 and "pigeon" in bad.stderr


def test_pairing_with_redis_down_is_one_clear_line(claw_home: ClawHome) -> None:
    from tests.fixtures.procs import free_port

    claw_home.write_config({"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    result = claw_home.clawctl("pairing", "list")
    assert result.returncode == 1 and "Redis" in result.stderr


def test_pairing_approve_refuses_an_empty_code(
    claw_home: ClawHome, redis_server: RedisServer
) -> None:
    claw_home.write_config({"redis": {"url": redis_server.url}})
    ask_for_code(redis_server, "1002")
    for empty in ("", "   "):
        result = claw_home.clawctl("pairing", "approve", empty)
        assert result.returncode == 1 and result.stderr.startswith(
            "Error: the pairing code is empty: give the code the sender was sent"
        ), result.stderr
