"""What ``clawctl status`` knows, gathered read-only (``status_render.py`` shows it).

Nothing is started (not even the embedded Redis). One Redis connection with a short timeout
answers everything it can; each part that fails reads as unknown (None) instead of failing
the rest, so the report comes within a couple of seconds whatever is down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from claw_worker import constants as k
from claw_worker.cli._common import current_path, mask_url
from claw_worker.config import (
    Config,
    ConfigError,
    apply_env_overrides,
    load_config,
    logs_dir,
    workspace_dir,
)
from claw_worker.config.running import find_fleet
from claw_worker.config.store import mask_secret, resolve_api_key
from claw_worker.control import live_processes
from claw_worker.queues import queue_depths
from claw_worker.redis_conn import client, redis_url

PROBE_TIMEOUT_SEC = 1.0
MAX_SESSIONS_PROBED = 1000  # active sessions looked at one by one (the count is exact)
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def collect() -> dict[str, Any]:
    path = current_path()
    report: dict[str, Any] = {
        "config": {"path": str(path), "exists": path.exists(), "valid": False, "error": None}
    }
    try:
        config = apply_env_overrides(load_config(path))
    except ConfigError as exc:
        report["config"]["error"] = str(exc)
        return report
    report["config"]["valid"] = True
    workspace = workspace_dir(config)
    url = redis_url(config)
    report.update(
        {
            "workspace": {"path": str(workspace), "exists": workspace.is_dir()},
            "model": config.agents.defaults.model
            or next(iter(config.providers.proxy.models), None),
            "provider": _provider(config),
            "logs": {"dir": str(logs_dir(config)), "enabled": config.logging.enabled},
            "redis": {
                "url": mask_url(url),
                "embedded": not config.redis.url,
                "reachable": False,
                "error": None,
            },
        }
    )
    conn = client(url, socket_timeout=PROBE_TIMEOUT_SEC,
                  socket_connect_timeout=PROBE_TIMEOUT_SEC, health_check_interval=0)  # fmt: skip
    try:
        conn.ping()
        report["redis"]["reachable"] = True
    except (redis.RedisError, OSError) as exc:
        report["redis"]["error"] = str(exc) or type(exc).__name__
        # A fleet still on the Redis it started with (redis.url changed since): show it.
        found = find_fleet(config, tried=(url,))
        if found is not None:
            conn.close()
            report["redis"]["fleet_url"], conn = mask_url(found[0]), found[1]
    try:
        reached = report["redis"]["reachable"] or "fleet_url" in report["redis"]
        report.update(_fleet(config, conn if reached else None))
    finally:
        conn.close()
    return report


def _fleet(config: Config, conn: redis.Redis | None) -> dict[str, Any]:
    """Everything that lives in Redis; each part None when it cannot be read."""

    def read(part: Callable[[], Any]) -> Any:
        if conn is None:
            return None
        try:
            return part()
        except (redis.RedisError, OSError, ValueError):
            return None

    records = read(lambda: live_processes(conn))
    names = None if records is None else sorted(f"{p['role']} {p['name']}" for p in records)
    return {
        # Only ask the workers through a broker that answers: Celery would retry the
        # connection for a long time otherwise.
        "workers": _workers(records) if conn is not None else None,
        "processes": names,
        "registry": records,
        "queues": read(lambda: queue_depths(conn)),
        "sessions_waiting": read(lambda: conn.zcard(k.DIRTY_SESSIONS)),
        "sessions": read(lambda: _sessions(conn)),
        "channels": _channels(config, records),
        "beat": read(lambda: _beat(conn, records or [])),
        "cron": read(lambda: _cron(config, conn)),
        "autonomy": read(lambda: _autonomy(conn)),
        "breakers": read(lambda: _breakers(config, conn)),
        "sentinel": read(lambda: _sentinel(config, conn)),
        "nodes": read(lambda: _nodes(conn)),
        "metrics": None if records is None else _scrape_targets(config, records),
        "exec": None if records is None else _exec(records),
    }


def _exec(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each worker's ``exec`` isolation (``tools/exec_posture.py``), as it registered it."""
    return [{"worker": r["name"], **r["exec"]} for r in records
            if r.get("role") == "worker" and isinstance(r.get("exec"), dict)]  # fmt: skip


def _provider(config: Config) -> dict[str, Any]:
    proxy = config.providers.proxy
    key = resolve_api_key(proxy.api_key)
    return {
        "api_base": proxy.api_base or None,
        "api_key": mask_secret(key) if key else None,
        "models": list(proxy.models),
        "fallbacks": list(config.providers.proxy_fallbacks),
    }


def _workers(records: list[dict[str, Any]] | None) -> list[str] | None:
    """Names of the workers that answer a ping, or None when that cannot be known. The ping
    ends once as many answered as the registry holds (else it waits the whole timeout)."""
    expected = sum(1 for r in records or () if r.get("role") == "worker") or None
    try:
        from claw_worker.celery import app

        replies = app.control.inspect(timeout=PROBE_TIMEOUT_SEC, limit=expected).ping() or {}
    except (Exception, SystemExit):  # no app yet, bad config, broker error: just unknown
        return None
    return sorted(replies)


def _sessions(conn: redis.Redis) -> dict[str, int]:
    """Active sessions (messages stored lately), how many run now (their lease is held),
    how many have messages queued, and messages waiting for resource keys."""
    active = int(conn.zcard(k.DIRTY_SESSIONS))
    keys = conn.zrange(k.DIRTY_SESSIONS, 0, MAX_SESSIONS_PROBED - 1)
    with conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(k.lease_key(key))
            pipe.llen(k.mailbox_key(key))
        pipe.zcard(k.LOCK_ORDER)
        found = pipe.execute()
    leased, queued = found[0:-1:2], found[1:-1:2]
    return {
        "active": active,
        "running": sum(1 for held in leased if held),
        "queued": sum(1 for n in queued if n),
        "resource_lock": int(found[-1]),
        "probed": len(keys),
    }


def _channels(config: Config, records: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Each enabled channel (the config's) and, per ingress, whether it started and how
    often it was restarted after a loop of it ended (the ingress copies its channels'
    states into its registry record)."""
    sections = config.channels
    enabled = [name for name in type(sections).model_fields if getattr(sections, name).enabled]
    found: dict[str, Any] = {name: {"enabled": True, "started": None, "errors": {},
                                    "restarts": 0} for name in enabled}  # fmt: skip
    for record in records or ():
        for name, state in (record.get("channels") or {}).items():
            entry = found.setdefault(name, {"enabled": name in enabled, "started": None,
                                            "errors": {}, "restarts": 0})  # fmt: skip
            entry["started"] = bool(entry["started"]) or bool(state.get("started"))
            entry["restarts"] += int(state.get("restarts") or 0)  # loops that died, restarted
            if state.get("error"):
                entry["errors"][record["name"]] = state["error"]
    return found


def _cron(config: Config, conn: redis.Redis) -> dict[str, Any]:
    from beat_schedules.cron_jobs import list_jobs

    rows = list_jobs(conn)
    due = sorted(((nxt, job) for job, nxt in rows if job.enabled and nxt is not None),
                 key=lambda item: item[0])  # fmt: skip
    failing = [
        {"id": job.id, "name": job.name, "consecutive_failures": job.consecutive_failures,
         "last_error": job.last_error[:200]}
        for job, _ in rows if job.consecutive_failures or job.last_status == "failed"
    ]  # fmt: skip
    nxt = None
    if due:
        at, job = due[0]
        nxt = {"id": job.id, "name": job.name, "at": at, "tz": job.schedule.tz}
    return {
        "enabled": config.cron.enabled,
        "jobs": len(rows),
        "jobs_enabled": sum(1 for job, _ in rows if job.enabled),
        "next": nxt,
        "failing": failing,
    }


def _beat(conn: redis.Redis, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The active beat (its registry record says so while it holds RedBeat's lock) and every
    beat process registered: with none, nothing fires (cron, heartbeat, sweeper, Sentinel)."""
    beats = [r for r in records if r.get("role") == "beat"]
    held = conn.exists(k.BEAT_LOCK_KEY)
    active = next((r["name"] for r in beats if r.get("active")), None) if held else None
    return {"active": active, "processes": sorted(r["name"] for r in beats)}


def _autonomy(conn: redis.Redis) -> dict[str, Any]:
    from claw_worker.autonomy_state import Autolearn, Autonomy

    raw = conn.hgetall(k.AUTONOMY)
    auto, learn = Autonomy.from_hash(raw), Autolearn.from_hash(raw)
    return {"autonomy": auto.enabled, "session_key": auto.session_key or None,
            "rounds": auto.rounds, "autolearn": learn.enabled}  # fmt: skip


def _breakers(config: Config, conn: redis.Redis) -> dict[str, Any]:
    """Each proxy's circuit breaker (providers/breaker.py)."""
    from claw_worker.providers.breaker import read_state
    from claw_worker.providers.registry import proxy_breakers

    breakers = {}
    for name, endpoint in proxy_breakers(config).items():
        state = read_state(conn, endpoint)
        breakers[name] = {
            "state": "open" if state.is_open() else "closed",
            "failures": state.failures,
            "open_until": state.open_until if state.is_open() else None,
        }
    return breakers


def _sentinel(config: Config, conn: redis.Redis) -> dict[str, Any]:
    """The Sentinel's last report (beat_schedules/sentinel.py); ``report`` is None before
    the first one."""
    raw = conn.get(k.SENTINEL_REPORT)
    facts: dict[str, Any] = {"enabled": config.sentinel.enabled, "report": None}
    if not raw:
        return facts
    try:
        report = json.loads(raw)
        fields = ("time", "process", "worst", "summary", "failing", "actions", "results")
        shown = {name: report[name] for name in fields}
        # Older than three intervals: the Sentinel (or beat, or every worker) stopped.
        shown["stale"] = time.time() - float(report["time"]) > 3 * config.sentinel.interval_sec
        facts["report"] = shown
    except (ValueError, TypeError, KeyError):
        facts["error"] = "unreadable report"
    return facts


def _nodes(conn: redis.Redis) -> dict[str, Any]:
    """The registered nodes (how many online) and the dispatch figures."""
    from claw_worker.nodes.registry import list_nodes
    from claw_worker.nodes.stats import summarize

    found = list_nodes(conn)
    online = sum(1 for n in found if n.online)
    return {"registered": len(found), "online": online,
            "dispatches": summarize(conn.hgetall(k.NODES_STATS))}  # fmt: skip


def _scrape_targets(config: Config, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where Prometheus finds each live process's /metrics (from the registry): the
    ingress's route (behind gateway.token when set) and each worker's own server."""
    targets = []
    for record in sorted(records, key=lambda r: (r.get("role", ""), r.get("name", ""))):
        where = record.get("metrics")
        if not isinstance(where, dict) or not where.get("port"):
            continue
        host = str(where.get("host") or "")
        if host in WILDCARD_HOSTS:
            host = str(record.get("host") or "127.0.0.1")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address in a URL
        targets.append({
            "process": f"{record.get('role')} {record.get('name')}",
            "url": f"http://{host}:{where['port']}{where.get('path') or '/metrics'}",
            # As the ingress said; an ingress that does not say: as this config says.
            "token": bool(where.get("token", record.get("role") == "ingress"
                                             and bool(config.gateway.token))),
        })  # fmt: skip
    return targets
