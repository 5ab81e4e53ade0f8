"""``clawctl status``: what this machine's clawfleet looks like, on one screen, read-only.

Config, workspace, model, provider, logs, Redis, workers and processes, queues, sessions,
channels, cron, autonomy, circuit breakers, the Sentinel's last report, nodes and where each
process serves /metrics. ``status_facts.py`` gathers it (never starting anything: every
probe has a short timeout and what it could not learn reads as unknown), ``status_render.py``
shows it; ``--json`` is the whole report.
"""

from __future__ import annotations

import json

import click

from claw_worker.cli.status_facts import collect
from claw_worker.cli.status_render import render


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: every fact.")
def status(as_json: bool) -> None:
    """Show the fleet on one screen: config, Redis, workers, queues, sessions, channels,
    cron, autonomy, breakers, Sentinel, nodes, metrics; exit 1 when the config is invalid
    or Redis does not answer."""
    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(render(report)))
    # Exit 1 when the config does not load (nothing else can be known) or Redis does not
    # answer (no fleet can run): scripts and health checks can rely on the status.
    if not report["config"]["valid"] or not report["redis"]["reachable"]:
        raise SystemExit(1)
