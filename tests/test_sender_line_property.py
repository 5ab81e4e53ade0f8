"""A sender's runs at once and its line (``SenderRuns``, claw_worker/quotas.py) under random
interleavings (hypothesis), in-process against a real redis-server: one sender's sessions
each have a few messages; step by step a session whose message is not running tries it, or
a running one finishes and moves to its next message. After every step: never more runs
than allowed, a try is granted exactly when the runs going on plus the live messages in line
before it leave a slot (so a message is never overtaken by one that began waiting later),
and the line in Redis is the model's. At the end, rounds of retries in any order run every
message (no one is stuck)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claw_worker import constants as k
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage
from claw_worker.quotas import SenderBusy, SenderRuns

SENDER = "api:pat"
STALE_SEC = 600.0  # nobody goes stale within one example


@dataclass
class Model:
    """What the line must do: the running sessions, and the waiting messages in order."""

    limit: int
    backlog: list[int]  # messages per session
    done: list[int] = field(default_factory=list)  # messages finished per session
    running: set[int] = field(default_factory=set)
    line: list[int] = field(default_factory=list)  # sessions whose message waits, in order

    def __post_init__(self) -> None:
        self.done = [0] * len(self.backlog)

    def ready(self) -> list[int]:
        """Sessions with a message that may try now."""
        return [s for s, n in enumerate(self.backlog) if s not in self.running and self.done[s] < n]

    def expect(self, session: int) -> SenderBusy | None:
        ahead = self.line.index(session) if session in self.line else len(self.line)
        going = len(self.running)
        return None if going + ahead < self.limit else SenderBusy(going, ahead)


def message(session: int, number: int) -> InboundMessage:
    return InboundMessage(message_id=f"m{session}x{number}", channel="api", chat_id=f"s{session}",
                          sender_id="pat", text="work")  # fmt: skip


def current(model: Model, session: int) -> InboundMessage:
    return message(session, model.done[session])


def attempt(runs: SenderRuns, config: Config, model: Model, session: int) -> None:
    got = runs.acquire(config, current(model, session), f"tok{session}", stale_sec=STALE_SEC)
    expected = model.expect(session)
    assert got == expected, (session, got, expected, model)
    if got is None:
        model.running.add(session)
        if session in model.line:
            model.line.remove(session)
    elif session not in model.line:
        model.line.append(session)


def finish(client: Any, runs: SenderRuns, model: Model, session: int) -> None:
    done = current(model, session)
    runs.release(done, f"tok{session}")
    client.hset(k.message_key(done.session_key, done.message_id), "status", "done")
    model.running.discard(session)
    model.done[session] += 1
    if model.done[session] < model.backlog[session]:
        nxt = current(model, session)
        client.hset(k.message_key(nxt.session_key, nxt.message_id), "status", "queued")


def check_redis(client: Any, model: Model) -> None:
    assert client.hlen(k.sender_runs_key(SENDER)) == len(model.running) <= model.limit
    line = client.zrange(k.sender_line_key(SENDER), 0, -1)
    expected = [k.message_key(current(model, s).session_key, current(model, s).message_id)
                for s in model.line]  # fmt: skip
    assert line == expected


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limit=st.integers(1, 3),
    backlog=st.lists(st.integers(1, 3), min_size=2, max_size=5),
    data=st.data(),
)
def test_runs_at_once_hold_and_nobody_is_overtaken_or_stuck(
    redis_server: Any, limit: int, backlog: list[int], data: Any
) -> None:
    client = redis_server.client()
    client.flushdb()
    config = Config.model_validate({"quotas": {"max_runs_per_sender": limit}})
    runs = SenderRuns(client)
    model = Model(limit, backlog)
    for session in range(len(backlog)):
        first = current(model, session)
        client.hset(k.message_key(first.session_key, first.message_id), "status", "queued")
        client.set(k.lease_key(first.session_key), f"tok{session}")  # each drain holds its own

    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        moves = ["try"] * bool(model.ready()) + ["finish"] * bool(model.running)
        if not moves:
            break
        if data.draw(st.sampled_from(moves), label="move") == "try":
            attempt(runs, config, model, data.draw(st.sampled_from(model.ready()), label="try"))
        else:
            finish(client, runs, model, data.draw(st.sampled_from(sorted(model.running))))
        check_redis(client, model)

    # Liveness: rounds in which the running finish and the rest try in any order run every
    # message, at most one round per message.
    for _ in range(sum(backlog) + 1):
        for session in sorted(model.running):
            finish(client, runs, model, session)
        if not model.ready():
            break
        for session in data.draw(st.permutations(model.ready()), label="round"):
            attempt(runs, config, model, session)
        check_redis(client, model)
    assert model.done == backlog and not model.running and not model.line
    assert client.zcard(k.sender_line_key(SENDER)) == 0
    assert not client.exists(k.sender_runs_key(SENDER))
