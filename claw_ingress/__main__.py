"""``claw-ingress``: the gateway process (uvicorn serving claw_ingress.app)."""

from __future__ import annotations

import gc
import sys

import click

BACKLOG = 2048  # uvicorn's default, named: the descriptor budget counts one accept batch
# The cyclic collector's thresholds (default 700, 10, 10). A request's objects are freed by
# reference counting, but at 50 connections the requests in flight hold more than 700 of
# them: a young-generation pass then ran every few requests, walked them and pushed them
# into older generations, which full passes walked again, over every object the process
# ever imported (measured: ~80 µs of ~330 µs of CPU per /v1/chat/completions request).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collect less often, and never again walk what start-up built (modules, config,
    schemas): ``gc.freeze`` moves it out of the collector's generations. Cycles are still
    collected, a pass every ``GC_THRESHOLDS[0]`` net allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config file")
@click.option("--host", default=None, help="listen address (default: gateway.host)")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="default: gateway.port")
@click.option(
    "--http",
    type=click.Choice(["httptools", "h11"]),
    default="httptools",
    show_default=True,
    help="HTTP/1.1 parser: httptools (C) or h11 (pure Python)",
)
def main(config_file: str | None, host: str | None, port: int | None, http: str) -> None:
    """Serve the clawfleet HTTP gateway."""
    import os

    import uvicorn

    from claw_worker.config import ConfigError, current_config
    from claw_worker.embedded_redis import EmbeddedRedisError

    if config_file:
        os.environ["CLAW_CONFIG"] = config_file
    try:
        config = current_config()
        from claw_worker.config.local import check_local
        from claw_worker.logs import setup_logging

        check_local(config, "ingress")  # its log directory
        from claw_worker.process import set_identity

        setup_logging(config, set_identity("ingress").log_name)
        from claw_worker.redis_conn import redis_url

        url = redis_url(config, start_embedded=True)
    except (ConfigError, EmbeddedRedisError) as exc:
        click.echo(f"claw-ingress: {exc}", err=True)
        sys.exit(2)
    # Checked before anything listens: a public address needs a token (or the override).
    exposure = config.gateway.exposure_problem(host)
    if exposure:
        click.echo(f"claw-ingress: {exposure}", err=True)
        sys.exit(2)
    from claw_ingress.app import create_app
    from claw_ingress.connections import ensure_fd_budget
    from claw_ingress.protocols import guarded_protocol

    app = create_app(config, url=url)
    app.state.bind = (host or config.gateway.host, port or config.gateway.port)  # the registry's
    ensure_fd_budget(config.gateway.max_connections, BACKLOG)
    tune_gc()
    uvicorn.run(
        app,
        host=app.state.bind[0],
        port=app.state.bind[1],
        backlog=BACKLOG,
        # uvicorn's protocol with a header deadline, a body backstop and the connection cap
        # (read from the live config per connection); uvicorn's own limit_concurrency
        # counts connections only once their headers are in, too late against a slow flood.
        http=guarded_protocol(app.state.live, http),
        loop="uvloop",
        # A WebSocket frame over the frame limit closes the connection (1009) before
        # uvicorn buffers more; the channel checks the live limit (a reload) per frame too.
        ws_max_size=config.gateway.frame_limit,
        # X-Forwarded-For is read by claw_ingress/client_addr.py, from gateway.trusted_proxies
        # only; uvicorn's own reading would believe it from any loopback peer.
        proxy_headers=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
