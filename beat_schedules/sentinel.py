"""The Sentinel: the fleet's periodic health check (``claw.sentinel.check``, every
``sentinel.interval_sec``, on the health queue).

Each round runs every check (``sentinel_checks.py``: config, workspace, logs, disk;
``sentinel_fleet.py``: Redis, queues, workers, beat, sessions); a check that raises is
reported as failed with its error and never stops the others, except a Redis that cannot
be reached: then every fleet check would fail the same way, and the report and its alerts
could not be written, so the round stops there with one finding, logged in one line, and
changes no alert mark (no alert per check, no "ok again" flood when Redis is back). With
``sentinel.auto_heal`` the checks repair what they safely can (recreate workspace files,
prune rotated logs, clear leases without a TTL, re-wake sessions nobody drains) and say
what they did.

The report is kept in Redis (``constants.SENTINEL_REPORT``; ``clawctl status`` and
``/status`` show it) and summed up in the log. Each check that is not ok alerts
``sentinel.notify_channel``/``notify_chat_id`` (a message on the outbound stream, delivered
by the ingress like any reply; without a target alerts are only logged), once per
``alert_quiet_sec`` (a mark per check, ``constants.sentinel_alert_key``), and a check that
alerted gets one "ok again" note when it recovers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog

from beat_schedules import sentinel_checks as host
from beat_schedules import sentinel_fleet as fleet
from beat_schedules.sentinel_checks import Finding, Probe
from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.contract import OutboundMessage, new_message_id
from claw_worker.process import identity

log = structlog.get_logger(__name__)

RANK = {"ok": 0, "warn": 1, "fail": 2}
ALERT_SESSION = "sentinel"  # the session_key alerts carry on the outbound stream
# Alert marks: "open" (alerted, no recovery note yet), "healed" (the alert said it was
# repaired: no note needed), "recovered" (the note was sent).
OPEN, HEALED, RECOVERED = "open", "healed", "recovered"

# Redis cannot be reached (refused, reset, timed out): nothing else can be checked or kept.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

# In order: Redis first (the other fleet checks need it), then the host, then the fleet.
CHECKS: dict[str, Callable[[Probe], Finding]] = {
    "redis": fleet.check_redis,
    "redis_memory": fleet.check_redis_memory,
    "redis_persistence": fleet.check_redis_persistence,
    "config": host.check_config,
    "workspace": host.check_workspace,
    "logs": host.check_logs,
    "disk": host.check_disk,
    "queues": fleet.check_queues,
    "workers": fleet.check_workers,
    "beat": fleet.check_beat,
    "stuck_runs": fleet.check_stuck_runs,
    "stale_leases": fleet.check_stale_leases,
    "idle_sessions": fleet.check_idle_sessions,
}


def run_checks(probe: Probe) -> list[dict[str, str]]:
    results = []
    for name, run in CHECKS.items():
        try:
            found = run(probe)
        except UNREACHABLE:
            raise  # not this check's fault: check() reports it once for the round
        except Exception as exc:  # one broken check must not hide the others
            log.exception("sentinel check crashed", check=name, error=repr(exc))
            found = Finding("fail", f"the check crashed: {type(exc).__name__}: {exc}"[:600])
        results.append(
            {"check": name, "state": found.state, "detail": found.detail, "healed": found.healed}
        )
    return results


def summarize(results: list[dict[str, str]]) -> tuple[str, str]:
    """(worst state, one line): ``ok: 13 checks passed`` or
    ``fail: workspace (fail, repaired), queues (warn)``."""
    worst = max((r["state"] for r in results), key=RANK.__getitem__, default="ok")
    bad = [r for r in results if r["state"] != "ok"]
    if not bad:
        return worst, f"ok: {len(results)} checks passed"
    shown = [f"{r['check']} ({r['state']}{', repaired' if r['healed'] else ''})" for r in bad]
    return worst, f"{worst}: {', '.join(shown)}"


def check(client: redis.Redis, config: Config) -> str:
    """One Sentinel round: check, heal (with auto_heal), keep the report, alert."""
    settings = config.sentinel
    if not settings.enabled:  # sent just before a reload switched it off
        return "sentinel disabled"
    probe = Probe(client, config, heal=settings.auto_heal)
    try:
        results = run_checks(probe)
    except UNREACHABLE as exc:
        return _unreachable(exc)
    worst, summary = summarize(results)
    me = identity()
    report: dict[str, Any] = {
        "time": time.time(),
        "host": me.host,
        "process": me.name,
        "auto_heal": settings.auto_heal,
        "worst": worst,
        "summary": summary,
        "failing": [r["check"] for r in results if r["state"] != "ok"],
        "actions": [f"{r['check']}: {r['healed']}" for r in results if r["healed"]],
        "results": results,
    }
    # Logged before anything is written: a Redis that refuses writes must not silence it.
    bound = log.bind(worst=worst, failing=report["failing"], actions=report["actions"])
    (bound.info if worst == "ok" else bound.warning)("sentinel report", summary=summary)
    try:
        client.set(k.SENTINEL_REPORT, json.dumps(report, ensure_ascii=False))
        sent = send_alerts(client, config, results, host=me.host)
    except UNREACHABLE as exc:  # went away after the checks
        return _unreachable(exc)
    except redis.ResponseError as exc:  # full (OOM with noeviction), read-only, ...
        # Alerts travel through Redis too: the log is all that can say what was found.
        found = [f"{r['check']}: {r['detail']}" for r in results if r["state"] != "ok"]
        log.error("sentinel: redis refused the report and its alerts", error=str(exc),
                  findings=found)  # fmt: skip
        return f"{summary}; not stored, no alert sent: redis refused writes ({exc})"
    return f"{summary}; {sent} alert(s) sent" if sent else summary


def _unreachable(exc: Exception) -> str:
    """The round's one finding when Redis cannot be reached. Only logged: the report and
    the alerts travel through Redis. Not raised either: the task would be retried with a
    traceback, and the next round checks again anyway."""
    detail = f"redis unreachable: {type(exc).__name__}: {exc}"[:600]
    log.error("sentinel: redis unreachable; nothing else checked, stored or alerted",
              error=detail)  # fmt: skip
    return f"fail: {detail}"


def send_alerts(
    client: redis.Redis, config: Config, results: list[dict[str, str]], *, host: str
) -> int:
    """Alert each check that is not ok (once per quiet period), and note each check that
    alerted and is ok again; returns how many messages were sent or logged."""
    quiet, sent = config.sentinel.alert_quiet_sec, 0
    for r in results:
        key = k.sentinel_alert_key(r["check"])
        if r["state"] != "ok":
            mark = HEALED if r["healed"] else OPEN
            if not client.set(key, mark, nx=True, ex=quiet):
                continue  # alerted within the quiet period
            text = f"[Sentinel {host}] {r['state'].upper()} {r['check']}: {r['detail']}"
            if r["healed"]:
                text += f"\nRepaired: {r['healed']}"
        else:
            # Atomically: the old mark, and "recovered" in its place (TTL kept).
            if client.set(key, RECOVERED, xx=True, keepttl=True, get=True) != OPEN:
                continue
            text = f"[Sentinel {host}] OK again {r['check']}: {r['detail']}"
        _notify(client, config, r["check"], text)
        sent += 1
    return sent


def _notify(client: redis.Redis, config: Config, check_name: str, text: str) -> None:
    channel, chat_id = config.sentinel.notify_channel, config.sentinel.notify_chat_id
    log.warning("sentinel alert", check=check_name, preview=text[:200], channel=channel or None)
    if not channel:
        return
    out = OutboundMessage(
        message_id=new_message_id(),
        channel=channel,
        chat_id=chat_id,
        session_key=ALERT_SESSION,
        text=text,
        metadata={"kind": "sentinel", "check": check_name},
    )
    client.xadd(k.OUTBOUND_STREAM, {"data": out.model_dump_json()},
                maxlen=k.OUTBOUND_MAXLEN, approximate=True)  # fmt: skip
