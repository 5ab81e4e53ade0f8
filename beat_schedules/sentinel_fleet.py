"""The Sentinel's checks of the fleet: Redis (latency, memory, persistence), the queues, the
processes (workers, beat) and the sessions (runs going on too long, leases that never
expire, mail nobody drains). Same shape as ``sentinel_checks.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import redis

from beat_schedules.sentinel_checks import Finding, Probe, fail, ok, warn
from claw_worker import constants as k
from claw_worker.control import live_processes
from claw_worker.queues import queue_depths
from claw_worker.session.wakeup import drain_message

PINGS = 3
MAX_KEYS = 10_000  # keys one scan looks at: a health check must stay cheap
MAX_NAMED = 5  # sessions named in a detail
# A lease is always set with a TTL (SET NX PX) and renewed; one without is left over by
# hand or by a bug, and would hold its session forever. Deleted only if still TTL-less.
DELETE_IF_PERSISTENT = """
if redis.call('PTTL', KEYS[1]) == -1 then return redis.call('DEL', KEYS[1]) end
return 0
"""


def check_redis(p: Probe) -> Finding:
    """PING round trip, the average of a few (a single hiccup is not a fault)."""
    took = []
    for _ in range(PINGS):
        start = time.perf_counter()
        p.redis.ping()
        took.append((time.perf_counter() - start) * 1000)
    average, limit = sum(took) / len(took), p.config.sentinel.redis_latency_warn_ms
    if average > limit:
        return warn(f"PING takes {average:.1f} ms on average, over {limit} ms")
    return ok(f"PING {average:.2f} ms")


def check_redis_memory(p: Probe) -> Finding:
    info = p.redis.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    policy = str(info.get("maxmemory_policy", ""))
    shown = f"{used / 1024 / 1024:.1f} MB used"
    if not limit:
        return ok(f"{shown}, no maxmemory limit")
    pct, warn_pct = 100 * used / limit, p.config.sentinel.redis_memory_warn_pct
    detail = f"{shown} of {limit / 1024 / 1024:.1f} MB maxmemory ({pct:.0f} %)"
    if pct >= 100 and policy == "noeviction":
        return fail(f"{detail}: writes are refused")
    if policy != "noeviction":
        # Eviction would silently drop queued tasks, mailboxes and leases.
        return warn(f"{detail}; maxmemory-policy {policy} may evict fleet keys: use noeviction")
    if pct > warn_pct:
        return warn(f"{detail}, over {warn_pct} %")
    return ok(detail)


def check_redis_persistence(p: Probe) -> Finding:
    info = p.redis.info("persistence")
    errors = [
        f"{name}={info[name]}"
        for name in ("rdb_last_bgsave_status", "aof_last_write_status", "aof_last_bgrewrite_status")
        if info.get(name) not in (None, "ok")
    ]
    if errors:
        return fail(f"persistence is failing: {', '.join(errors)} (see the Redis log)")
    aof = bool(int(info.get("aof_enabled", 0)))
    try:
        save = str(p.redis.config_get("save").get("save", "")).strip()
    except redis.ResponseError:  # CONFIG refused (a managed Redis): the schedule is unknown
        save = None
    if aof:
        return ok("AOF on" + (f", RDB save {save}" if save else ""))
    if save:
        return ok(f"RDB save {save} (AOF off: the last seconds may be lost on a crash)")
    if save is None:
        return ok("AOF off; RDB schedule unknown (CONFIG is refused)")
    return warn("no persistence (AOF off, no RDB save): a Redis restart loses queued work")


def check_queues(p: Probe) -> Finding:
    depths, limit = queue_depths(p.redis), p.config.sentinel.max_queue_depth
    shown = " ".join(f"{name}={depth}" for name, depth in depths.items())
    over = [name for name, depth in depths.items() if depth > limit]
    if over:
        return warn(f"{shown}: {', '.join(over)} over {limit}")
    return ok(shown)


def check_workers(p: Probe) -> Finding:
    workers = [r["name"] for r in live_processes(p.redis, now=p.now) if r.get("role") == "worker"]
    if not workers:
        return fail("no live worker in the registry: nothing runs the sessions")
    return ok(f"{len(workers)} live: {', '.join(sorted(workers)[:MAX_NAMED])}")


def check_beat(p: Probe) -> Finding:
    beats = [r["name"] for r in live_processes(p.redis, now=p.now) if r.get("role") == "beat"]
    locked = bool(p.redis.exists(k.BEAT_LOCK_KEY))
    if beats and locked:
        return ok(f"{len(beats)} live, one holds the lock: {', '.join(sorted(beats))}")
    if not beats and not locked:
        return fail("no beat: no sweeps, cron, heartbeat or Sentinel rounds")
    if not locked:
        return fail(f"beat {', '.join(sorted(beats))} is live but none holds the lock")
    return warn("the beat lock is held but no beat is in the registry (stale lock?)")


# -- sessions -----------------------------------------------------------------------------


def _sessions(client: redis.Redis, key_of: Callable[[str], str]) -> Iterator[str]:
    """Session keys that have a key made by ``key_of`` (e.g. ``constants.lease_key``)."""
    prefix = key_of("")[:-1]  # "claw:lease:{"
    for n, key in enumerate(client.scan_iter(match=prefix + "*", count=1000)):
        if n >= MAX_KEYS:
            return
        if key.endswith("}"):
            yield key[len(prefix) : -1]


def _named(sessions: list[str]) -> str:
    more = f" and {len(sessions) - MAX_NAMED} more" if len(sessions) > MAX_NAMED else ""
    return ", ".join(sessions[:MAX_NAMED]) + more


def check_stuck_runs(p: Probe) -> Finding:
    """Messages in flight whose run started more than stuck_run_sec ago. Not healed: a
    long run may be legitimate (a long tool call); /stop in its chat ends it."""
    limit, stuck = p.config.sentinel.stuck_run_sec, []
    for session in _sessions(p.redis, k.inflight_key):
        raw = p.redis.lindex(k.inflight_key(session), 0)
        if not raw:
            continue
        try:
            message_id = str(json.loads(raw)["message_id"])
        except (ValueError, KeyError, TypeError):
            continue
        status, started = p.redis.hmget(k.message_key(session, message_id), "status", "started_at")
        if status == "running" and started and p.now - float(started) > limit:
            stuck.append(f"{session} ({p.now - float(started):.0f}s)")
    if stuck:
        return warn(
            f"{len(stuck)} run(s) going on longer than {limit}s: {_named(stuck)}; left "
            "running (a long run may be legitimate): /stop in the chat ends one"
        )
    return ok(f"no run longer than {limit}s")


def check_stale_leases(p: Probe) -> Finding:
    """Session leases without a TTL: they would hold their session forever."""
    stale = [s for s in _sessions(p.redis, k.lease_key) if p.redis.pttl(k.lease_key(s)) == -1]
    if not stale:
        return ok("every session lease expires")
    detail = f"{len(stale)} session lease(s) without a TTL: {_named(stale)}"
    if not p.heal:
        return fail(detail)
    delete = p.redis.register_script(DELETE_IF_PERSISTENT)
    cleared = [s for s in stale if int(delete(keys=[k.lease_key(s)]))]
    return fail(detail, healed=f"cleared the lease of {_named(cleared)}" if cleared else "")


def check_idle_sessions(p: Probe) -> Finding:
    """Sessions with mail waiting, no lease, and no wake-up for over twice the sweep
    interval (the sweeper should have sent one); healed by pushing a drain task."""
    grace = 2 * p.config.worker.sweep_interval_sec
    stale = p.redis.zrangebyscore(k.DIRTY_SESSIONS, "-inf", p.now - grace, start=0, num=MAX_KEYS)
    candidates = set(stale)
    candidates.update(_sessions(p.redis, k.mailbox_key), _sessions(p.redis, k.inflight_key))
    idle = []
    for session in sorted(candidates):
        with p.redis.pipeline(transaction=False) as pipe:
            pipe.exists(k.lease_key(session))
            pipe.llen(k.mailbox_key(session))
            pipe.llen(k.inflight_key(session))
            pipe.zscore(k.DIRTY_SESSIONS, session)
            held, waiting, inflight, woken = pipe.execute()
        if not held and waiting + inflight and (woken is None or woken < p.now - grace):
            idle.append(session)
    if not idle:
        return ok("no session waits for a wake-up")
    detail = (
        f"{len(idle)} session(s) with mail and nobody draining for over {grace}s: {_named(idle)}"
    )
    if not p.heal:
        return fail(detail)
    with p.redis.pipeline(transaction=False) as pipe:
        for session in idle:
            pipe.zadd(k.DIRTY_SESSIONS, {session: time.time()})  # the sweeper follows it again
            pipe.lpush(k.QUEUE_SESSIONS, drain_message(session))  # as the enqueue script does
        pipe.execute()
    return fail(detail, healed=f"re-woke {_named(idle)}")
