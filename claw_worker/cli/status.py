"""``clawctl status``: what this machine's clawfleet looks like, read-only.

It never starts anything (not even the embedded Redis) and answers within a few seconds
when Redis or the workers are down: every probe has a short timeout and reports what it
could not learn as unknown instead of failing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
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
from claw_worker.config.store import mask_secret, resolve_api_key
from claw_worker.control import live_processes
from claw_worker.queues import queue_depths
from claw_worker.redis_conn import client, redis_url

PROBE_TIMEOUT_SEC = 1.0


def _provider(config: Config) -> dict[str, Any]:
    proxy = config.providers.proxy
    key = resolve_api_key(proxy.api_key)
    return {
        "api_base": proxy.api_base or None,
        "api_key": mask_secret(key) if key else None,
        "models": list(proxy.models),
        "fallbacks": list(config.providers.proxy_fallbacks),
    }


def _redis_facts(url: str) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "reachable": False, "error": None, "queues": None, "waiting": None, "processes": None,
    }  # fmt: skip
    conn = client(
        url,
        socket_timeout=PROBE_TIMEOUT_SEC,
        socket_connect_timeout=PROBE_TIMEOUT_SEC,
        health_check_interval=0,
    )
    try:
        conn.ping()
        facts["reachable"] = True
        facts["queues"] = queue_depths(conn)
        facts["waiting"] = conn.zcard(k.DIRTY_SESSIONS)
        facts["processes"] = sorted(
            (f"{p['role']} {p['name']}" for p in live_processes(conn)), key=str
        )
    except (redis.RedisError, OSError) as exc:
        facts["error"] = str(exc) or type(exc).__name__
    finally:
        conn.close()
    return facts


def _breakers(config: Config, url: str) -> dict[str, Any] | None:
    """Each proxy's circuit breaker (providers/breaker.py), or None when Redis is down."""
    from claw_worker.providers.breaker import read_state
    from claw_worker.providers.registry import proxy_breakers

    conn = client(url, socket_timeout=PROBE_TIMEOUT_SEC, socket_connect_timeout=PROBE_TIMEOUT_SEC)
    try:
        conn.ping()
        breakers = {}
        for name, endpoint in proxy_breakers(config).items():
            state = read_state(conn, endpoint)
            breakers[name] = {
                "state": "open" if state.is_open() else "closed",
                "failures": state.failures,
                "open_until": state.open_until if state.is_open() else None,
            }
        return breakers
    except (redis.RedisError, OSError):
        return None
    finally:
        conn.close()


def _sentinel(config: Config, url: str) -> dict[str, Any] | None:
    """The Sentinel's last report (beat_schedules/sentinel.py), or None when Redis is down;
    ``report`` is None before the first one."""
    conn = client(url, socket_timeout=PROBE_TIMEOUT_SEC, socket_connect_timeout=PROBE_TIMEOUT_SEC)
    try:
        raw = conn.get(k.SENTINEL_REPORT)
    except (redis.RedisError, OSError):
        return None
    finally:
        conn.close()
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


def _nodes(url: str) -> dict[str, Any] | None:
    """The registered nodes (how many online) and the dispatch figures, or None when Redis
    is down."""
    from claw_worker.nodes.registry import list_nodes
    from claw_worker.nodes.stats import summarize

    conn = client(url, socket_timeout=PROBE_TIMEOUT_SEC, socket_connect_timeout=PROBE_TIMEOUT_SEC)
    try:
        found = list_nodes(conn)
        raw = conn.hgetall(k.NODES_STATS)
    except (redis.RedisError, OSError):
        return None
    finally:
        conn.close()
    online = sum(1 for n in found if n.online)
    return {"registered": len(found), "online": online, "dispatches": summarize(raw)}


def _workers() -> list[str] | None:
    """Names of the workers that answer a ping, or None when that cannot be known."""
    try:
        from claw_worker.celery import app

        replies = app.control.inspect(timeout=PROBE_TIMEOUT_SEC).ping() or {}
    except (Exception, SystemExit):  # no app yet, bad config, broker error: just unknown
        return None
    return sorted(replies)


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
    facts = _redis_facts(url)
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
                "reachable": facts["reachable"],
                "error": facts["error"],
            },
            # Only ask the workers through a broker that answers: Celery would retry the
            # connection for a long time otherwise.
            "workers": _workers() if facts["reachable"] else None,
            "queues": facts["queues"],
            "sessions_waiting": facts["waiting"],
            "processes": facts["processes"],
            "breakers": _breakers(config, url) if facts["reachable"] else None,
            "sentinel": _sentinel(config, url) if facts["reachable"] else None,
            "nodes": _nodes(url) if facts["reachable"] else None,
        }
    )
    return report


def _render(report: dict[str, Any]) -> list[str]:
    cfg = report["config"]
    state = "INVALID" if not cfg["valid"] else ("ok" if cfg["exists"] else "missing: defaults")
    lines = [f"config     {cfg['path']} ({state})"]
    if not cfg["valid"]:
        return [*lines, *("  " + line for line in cfg["error"].splitlines())]
    ws, prov, logs, rds = report["workspace"], report["provider"], report["logs"], report["redis"]
    lines.append(
        f"workspace  {ws['path']}" + ("" if ws["exists"] else " (missing: clawctl onboard)")
    )
    lines.append(f"model      {report['model'] or '(not set)'}")
    base = prov["api_base"] or "(not set: clawctl login)"
    lines.append(f"provider   {base}  key {prov['api_key'] or '(none)'}")
    lines.append(f"logs       {logs['dir']}" + ("" if logs["enabled"] else " (file logging off)"))
    kind = "embedded" if rds["embedded"] else "external"
    reach = "reachable" if rds["reachable"] else f"unreachable ({rds['error']})"
    lines.append(f"redis      {rds['url']} ({kind}) {reach}")
    workers = report["workers"]
    if workers is None:
        lines.append("workers    unknown")
    else:
        lines.append(f"workers    {len(workers)}" + (f": {', '.join(workers)}" if workers else ""))
    queues = report["queues"]
    shown = " ".join(f"{n}={d}" for n, d in queues.items()) if queues is not None else "unknown"
    lines.append(f"queues     {shown}")
    waiting = report["sessions_waiting"]
    lines.append(f"sessions   {'unknown' if waiting is None else waiting} waiting")
    procs = report["processes"]
    if procs is None:
        lines.append("processes  unknown")
    else:
        lines.append(f"processes  {len(procs)}" + (f": {', '.join(procs)}" if procs else ""))
    lines.extend(_render_breakers(report.get("breakers")))
    lines.append(_render_sentinel(report.get("sentinel")))
    lines.append(_render_nodes(report.get("nodes")))
    return lines


def _render_sentinel(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return "sentinel   unknown"
    last = facts["report"]
    off = "" if facts["enabled"] else " (disabled)"
    if last is None:
        return f"sentinel   {facts.get('error') or 'no report yet'}{off}"
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
    shown = f"sentinel   {last['worst']} at {at}"
    if last["failing"]:
        shown += f": {', '.join(last['failing'])}"
    if last["actions"]:
        shown += f" ({len(last['actions'])} repaired)"
    return shown + (" (stale)" if last["stale"] else "") + off


def _render_nodes(facts: dict[str, Any] | None) -> str:
    from claw_worker.nodes.stats import describe

    if facts is None:
        return "nodes      unknown"
    registered = f"{facts['online']} online of {facts['registered']}"
    return f"nodes      {registered}; {describe(facts['dispatches'])}"


def _render_breakers(breakers: dict[str, Any] | None) -> list[str]:
    if breakers is None:
        return ["breakers   unknown"]
    shown = []
    for name, b in breakers.items():
        if b["state"] == "open":
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["open_until"]))
            shown.append(f"{name}=open until {until}")
        else:
            failures = f" ({b['failures']} recent failures)" if b["failures"] else ""
            shown.append(f"{name}=closed{failures}")
    return [f"breakers   {', '.join(shown)}"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show config, workspace, model, logs, Redis, workers and queues; exit 1 when the
    config is invalid or Redis does not answer."""
    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(_render(report)))
    # Exit 1 when the config does not load (nothing else can be known) or Redis does not
    # answer (no fleet can run): scripts and health checks can rely on the status.
    if not report["config"]["valid"] or not report["redis"]["reachable"]:
        raise SystemExit(1)
