"""The resource-key lock script under random overlapping key sets (hypothesis), in-process
against a real redis-server: tasks arrive in order and, step by step, a waiting task tries
again or a holder lets go. After every step: no key has two holders, a task is granted
exactly when its keys are free and no older waiter shares one of them (so the oldest waiter
is never overtaken), and what blocked a refused task is named right. At the end, retrying
everything in any order grants every task (no deadlock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claw_worker import constants as k
from claw_worker.work.locks import HeldKeys, ResourceLocks

RESOURCES = ["repo:a", "repo:b", "file:x.py", "branch:main", "file:y.go"]
STALE_SEC = 600.0  # nobody goes stale within one example

key_sets = st.lists(
    st.sets(st.sampled_from(RESOURCES), min_size=1, max_size=3), min_size=2, max_size=7
)


@dataclass
class Model:
    """What the locks must do: holders per key, and the waiters in order of first refusal."""

    tasks: list[frozenset[str]]
    holder: dict[str, int] = field(default_factory=dict)  # key -> task
    order: dict[int, int] = field(default_factory=dict)  # waiting task -> place in line
    held: dict[int, HeldKeys] = field(default_factory=dict)
    arrived: int = 0
    next_place: int = 0
    granted: set[int] = field(default_factory=set)

    def expect(self, task: int) -> tuple[bool, dict[str, str]]:
        """(granted?, key -> why it blocks) for a try by ``task`` now."""
        mine = self.order.get(task, float("inf"))
        blocked = {}
        for key in sorted(self.tasks[task]):
            if key in self.holder:
                blocked[key] = "held"
            elif any(
                key in self.tasks[other] and place < mine
                for other, place in self.order.items()
                if other != task
            ):
                blocked[key] = "waiter"
        return not blocked, blocked


def attempt(locks: ResourceLocks, model: Model, task: int) -> bool:
    expected, why = model.expect(task)
    result = locks.acquire(f"t{task}", model.tasks[task], stale_sec=STALE_SEC)
    assert (result.held is not None) == expected, (task, why, result)
    if result.held is None:
        assert dict(result.blocked) == why, (task, result.blocked, why)
        assert result.since > 0
        if task not in model.order:  # its place in line: the order of first refusals
            model.order[task] = model.next_place
            model.next_place += 1
        return False
    for key in model.tasks[task]:
        assert key not in model.holder, (
            f"{key} granted to t{task} while t{model.holder[key]} holds it"
        )
        model.holder[key] = task
    model.order.pop(task, None)
    model.held[task] = result.held
    model.granted.add(task)
    return True


def release(locks: ResourceLocks, model: Model, task: int) -> None:
    locks.release(model.held.pop(task))
    for key in model.tasks[task]:
        del model.holder[key]


def check_redis(client: Any, model: Model) -> None:
    for key in RESOURCES:
        value = client.get(k.resource_lock_key(key))
        if key in model.holder:
            assert value is not None and value.startswith(f"t{model.holder[key]}."), (key, value)
        else:
            assert value is None, (key, value)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tasks=key_sets, data=st.data())
def test_all_or_nothing_fair_and_deadlock_free(redis_server: Any, tasks: Any, data: Any) -> None:
    client = redis_server.client()
    client.flushdb()
    locks = ResourceLocks(client, ttl_ms=60_000)
    model = Model([frozenset(keys) for keys in tasks])

    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        waiting = sorted(model.order)
        moves = ["arrive"] * (model.arrived < len(model.tasks))
        moves += ["retry"] * bool(waiting) + ["release"] * bool(model.held)
        if not moves:
            break
        move = data.draw(st.sampled_from(moves), label="move")
        if move == "arrive":
            model.arrived += 1
            attempt(locks, model, model.arrived - 1)
        elif move == "retry":
            attempt(locks, model, data.draw(st.sampled_from(waiting), label="retry"))
        else:
            release(locks, model, data.draw(st.sampled_from(sorted(model.held)), label="release"))
        check_redis(client, model)

    # Liveness: everyone arrives, holders let go, then rounds of retries in any order (each
    # grant held until the round ends) grant every task within one round per task.
    while model.arrived < len(model.tasks):
        model.arrived += 1
        attempt(locks, model, model.arrived - 1)
    for _ in range(len(model.tasks) + 1):
        for task in sorted(model.held):
            release(locks, model, task)
        if not model.order:
            break
        for task in data.draw(st.permutations(sorted(model.order)), label="round"):
            attempt(locks, model, task)
        check_redis(client, model)
    assert not model.order, f"still waiting after every round: {sorted(model.order)}"
    assert model.granted == set(range(len(model.tasks)))
    for task in sorted(model.held):
        release(locks, model, task)
    # Nothing is left behind: no holder, no waiter, no place in line.
    assert client.zcard(k.LOCK_ORDER) == 0 and client.zcard(k.LOCK_SEEN) == 0
    assert client.hlen(k.LOCK_SINCE) == 0
    assert not [key for key in client.scan_iter("claw:{locks}:*") if key != k.LOCK_SEQ]
