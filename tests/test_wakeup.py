"""The drain wake-up the enqueue script pushes is the message Celery itself would publish,
and it is pushed once per queued drain, not once per message."""

from __future__ import annotations

import asyncio
import base64
import json

import redis.asyncio as aioredis

from claw_worker import constants as k
from claw_worker.celery_config import sender_app
from claw_worker.config import Config
from claw_worker.contract import InboundMessage
from claw_worker.session.enqueue import AsyncMailbox
from claw_worker.session.mailbox import Mailbox
from claw_worker.session.wakeup import drain_message
from tests.fixtures.redis_server import RedisServer


def test_the_message_has_the_shape_celery_publishes(redis_server: RedisServer) -> None:
    app = sender_app(Config.model_validate({"redis": {"url": redis_server.url}}))
    app.send_task(k.TASK_DRAIN, args=["api:x"], queue=k.QUEUE_SESSIONS)
    celery_made = json.loads(redis_server.client().lpop(k.QUEUE_SESSIONS))
    ours = json.loads(drain_message("api:x"))

    def shape(node: object) -> object:
        if isinstance(node, dict):
            return {key: shape(value) for key, value in node.items()}
        return type(node).__name__ if node is not None else None

    for message in (celery_made, ours):  # ids, origin and result handling differ by design
        message["headers"]["ignore_result"] = message["properties"]["reply_to"] = "-"
    assert shape(ours) == shape(celery_made)
    assert ours["headers"]["task"] == celery_made["headers"]["task"] == k.TASK_DRAIN
    assert ours["properties"]["delivery_info"] == celery_made["properties"]["delivery_info"]
    body, celery_body = (json.loads(base64.b64decode(m["body"])) for m in (ours, celery_made))
    assert body == celery_body == [["api:x"], {}, body[2]]


def test_one_drain_is_queued_per_wake_up_not_per_message(redis_server: RedisServer) -> None:
    async def enqueue(texts: list[str]) -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            box = AsyncMailbox(client)
            for text in texts:
                await box.enqueue(InboundMessage(channel="api", chat_id="s", text=text))
        finally:
            await client.aclose()

    client = redis_server.client()
    asyncio.run(enqueue(["a", "b", "c"]))
    assert client.llen(k.QUEUE_SESSIONS) == 1  # one drain for the three
    Mailbox(client).drain_started("api:s")  # what the drain task does first
    asyncio.run(enqueue(["d"]))
    assert client.llen(k.QUEUE_SESSIONS) == 2  # stored after the drain looked: woken again
    task = json.loads(client.rpop(k.QUEUE_SESSIONS))
    assert json.loads(base64.b64decode(task["body"]))[0] == ["api:s"]
