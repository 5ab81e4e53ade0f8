"""``clawctl status`` as one screen: a line per part of the report ``status_facts.py`` made."""

from __future__ import annotations

import time
from typing import Any

UNKNOWN = "unknown"


def _at(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _listed(items: list[str] | None) -> str:
    if items is None:
        return UNKNOWN
    return f"{len(items)}" + (f": {', '.join(items)}" if items else "")


def render(report: dict[str, Any]) -> list[str]:
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
    if rds.get("fleet_url"):
        lines.append(f"           but the running fleet is on {rds['fleet_url']}: the config "
                     "names another Redis (restart the fleet to move it)")  # fmt: skip
    lines.append(f"workers    {_listed(report['workers'])}")
    lines.append(f"processes  {_listed(report['processes'])}")
    queues = report["queues"]
    shown = " ".join(f"{n}={d}" for n, d in queues.items()) if queues is not None else UNKNOWN
    lines.append(f"queues     {shown}")
    lines.append(_sessions(report.get("sessions")))
    lines.append(_channels(report.get("channels") or {}))
    lines.append(_beat(report.get("beat")))
    lines.append(_cron(report.get("cron")))
    lines.append(_autonomy(report.get("autonomy")))
    lines.append(_breakers(report.get("breakers")))
    lines.append(_sentinel(report.get("sentinel")))
    lines.append(_nodes(report.get("nodes")))
    lines.append(_exec(report.get("exec")))
    lines.append(_metrics(report.get("metrics")))
    return lines


def _exec(workers: list[dict[str, Any]] | None) -> str:
    """One line: the workers that isolate commands alike are named together; anything
    less than bwrap with a process limit is marked (!)."""
    if workers is None:
        return f"exec       {UNKNOWN}"
    if not workers:
        return "exec       no worker registered"
    alike: dict[str, list[str]] = {}
    for w in workers:
        limit = w["process_limit"]
        unlimited = limit.startswith("none")
        network = "network allowed" if w["network"] else "no network"
        processes = (f"no process limit ({limit.removeprefix('none: ')})" if unlimited
                     else f"at most {w['max_processes']} processes ({limit})")  # fmt: skip
        weak = w["sandbox"] != "bwrap" or unlimited
        shape = f"{'(!) ' if weak else ''}sandbox {w['sandbox']}; {network}; {processes}"
        alike.setdefault(shape, []).append(w["worker"])
    return "exec       " + " | ".join(f"{', '.join(names)}: {shape}"
                                      for shape, names in alike.items())  # fmt: skip


def _sessions(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return f"sessions   {UNKNOWN}"
    shown = (f"sessions   {facts['active']} active: {facts['running']} running, "
             f"{facts['queued']} with messages queued, {facts['resource_lock']} messages in "
             "resource_lock")  # fmt: skip
    if facts["probed"] < facts["active"]:
        shown += f" (of the first {facts['probed']})"
    return shown


def _channels(channels: dict[str, Any]) -> str:
    if not channels:
        return "channels   none enabled (the HTTP API and /ws are always on)"
    shown = []
    for name, facts in channels.items():
        if facts["errors"]:
            why = "; ".join(facts["errors"].values())
            shown.append(f"{name} failing ({why})")
        elif facts["started"] is None:
            shown.append(f"{name} (no ingress)" if facts["enabled"] else name)
        else:
            shown.append(f"{name} {'started' if facts['started'] else 'starting'}")
        if facts.get("restarts"):
            shown[-1] += f" (restarted {facts['restarts']}x after a loop ended: see its log)"
    return "channels   " + ", ".join(shown)


def _beat(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return f"beat       {UNKNOWN}"
    standby = [name for name in facts["processes"] if name != facts["active"]]
    if facts["active"]:
        shown = f"beat       active {facts['active']}"
        return shown + (f"; standby {', '.join(standby)}" if standby else "")
    if standby:
        return f"beat       (!) no active beat yet; waiting: {', '.join(standby)}"
    return "beat       (!) none running: cron, heartbeat, the sweeper and the Sentinel are stopped"


def _cron(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return f"cron       {UNKNOWN}"
    shown = f"cron       {facts['jobs']} jobs, {facts['jobs_enabled']} enabled"
    if not facts["enabled"]:
        shown += " (cron.enabled is false: none fires)"
    nxt = facts["next"]
    if nxt is not None:
        shown += f"; next {nxt['name']} ({nxt['id']}) at {_at(nxt['at'])}"
    if facts["failing"]:
        failing = (f"{job['name']} ({job['id']}) x{job['consecutive_failures']}"
                   for job in facts["failing"])  # fmt: skip
        shown += f"; failing: {', '.join(failing)}"
    return shown


def _autonomy(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return f"autonomy   {UNKNOWN}"
    auto = "on" if facts["autonomy"] else "off"
    if facts["autonomy"] and facts["session_key"]:
        auto += f" for {facts['session_key']} ({facts['rounds']} rounds)"
    return f"autonomy   {auto}; auto-learning {'on' if facts['autolearn'] else 'off'}"


def _breakers(breakers: dict[str, Any] | None) -> str:
    if breakers is None:
        return f"breakers   {UNKNOWN}"
    shown = []
    for name, b in breakers.items():
        if b["state"] == "open":
            shown.append(f"{name}=open until {_at(b['open_until'])}")
        else:
            failures = f" ({b['failures']} recent failures)" if b["failures"] else ""
            shown.append(f"{name}=closed{failures}")
    return f"breakers   {', '.join(shown)}"


def _sentinel(facts: dict[str, Any] | None) -> str:
    if facts is None:
        return f"sentinel   {UNKNOWN}"
    last = facts["report"]
    off = "" if facts["enabled"] else " (disabled)"
    if last is None:
        return f"sentinel   {facts.get('error') or 'no report yet'}{off}"
    shown = f"sentinel   {last['worst']} at {_at(last['time'])}"
    if last["failing"]:
        shown += f": {', '.join(last['failing'])}"
    if last["actions"]:
        shown += f" ({len(last['actions'])} repaired)"
    return shown + (" (stale)" if last["stale"] else "") + off


def _nodes(facts: dict[str, Any] | None) -> str:
    from claw_worker.nodes.stats import describe

    if facts is None:
        return f"nodes      {UNKNOWN}"
    registered = f"{facts['online']} online of {facts['registered']}"
    return f"nodes      {registered}; {describe(facts['dispatches'])}"


def _metrics(targets: list[dict[str, Any]] | None) -> str:
    if targets is None:
        return f"metrics    {UNKNOWN}"
    if not targets:
        return "metrics    no process serves /metrics"
    shown = (t["url"] + (" (token)" if t["token"] else "") for t in targets)
    return f"metrics    {', '.join(shown)}"
