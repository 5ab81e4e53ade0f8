"""How many tasks wait on each Celery queue, read straight from Redis (``clawctl status``,
the Sentinel): no Celery app needed, so nothing is started to ask."""

from __future__ import annotations

import redis

from claw_worker import constants as k

# kombu's Redis transport keeps a queue as a list named after it, plus one list per
# non-default priority level, named queue + "\x06\x16" + level.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_LEVELS = (3, 6, 9)


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Tasks waiting on each queue of ``constants.ALL_QUEUES``, priority levels included."""
    pipe = client.pipeline(transaction=False)
    for name in k.ALL_QUEUES:
        pipe.llen(name)
        for level in KOMBU_PRIORITY_LEVELS:
            pipe.llen(f"{name}{KOMBU_PRIORITY_SEP}{level}")
    lengths = pipe.execute()
    step = 1 + len(KOMBU_PRIORITY_LEVELS)
    return {name: sum(lengths[i * step : (i + 1) * step]) for i, name in enumerate(k.ALL_QUEUES)}
