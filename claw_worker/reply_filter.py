"""Output filtering: what leaves the fleet towards users is scrubbed of secrets.

Applied where text is put on the outbound stream or in a message's record: a run's reply
and failure text (session/runner.py ``_finish``: slash commands' answers such as
``/status`` and ``/config get`` included), the ``message`` tool's posts, pipeline reports.
The config's own secrets are always masked there; the shapes of secrets (API keys, tokens,
card numbers: claw_worker/secret_shapes.py) unless ``security.redact_replies`` is off.

Logs are filtered by claw_worker/logs.py. What the model reads (tool results, a key it
was told to use) is never filtered: it may need the value to do its work.
"""

from __future__ import annotations

import threading

from claw_worker.config.schema import Config
from claw_worker.config.store import secret_values
from claw_worker.redact import Redactor

# Configs change only on a reload: one redactor per config object, a few kept. The config
# itself is kept with its redactor, so its id() cannot be reused by another object.
_CACHE_SIZE = 4
_cache: dict[int, tuple[Config, Redactor]] = {}
_lock = threading.Lock()


def reply_redactor(config: Config) -> Redactor:
    """The redactor for text sent to users under ``config``."""
    with _lock:
        hit = _cache.get(id(config))
        if hit is not None and hit[0] is config:
            return hit[1]
    redactor = Redactor(secret_values(config), shapes=config.security.redact_replies)
    with _lock:
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))  # the oldest: dicts keep insertion order
        _cache[id(config)] = (config, redactor)
    return redactor


def filter_reply(config: Config, text: str) -> str:
    """``text`` as it may be shown to a user: secrets masked."""
    return reply_redactor(config).scrub(text)
