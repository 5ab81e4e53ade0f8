"""Fleet benchmark: ``python -m bench.fleet [--sessions 100 --messages 20 --delay 0.5]``.

Starts its own redis-server (loopback port, AOF everysec unless --no-aof), a temp $CLAW_HOME
with config.json, the scripted LLM server (``tests.llm_server``), ONE Celery worker (threads
pool) and the ingress; sends the load over HTTP; prints host facts and a Markdown table;
stops every process it started (by PID / process group), also on Ctrl-C and errors.

Phases: a warm-up message; the Celery no-op round trip baseline (``claw.health.ping``); the
main phase (sessions x messages, each session FIFO so at most ``sessions`` runs in flight);
a wide phase (``--wide-sessions`` x ``--wide-messages``) to show >= 200 runs in flight.
Exit status 1 when any message was lost, duplicated or out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.analysis import PhaseMetrics, analyse
from bench.load import run_phase
from bench.procs import Procs, Sampler, free_port, wait_for
from bench.report import Resources, host_lines, problems, table

REPO = Path(__file__).resolve().parent.parent
QUEUES = "sessions,tools,cron,health"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--delay", type=float, default=0.5, help="scripted LLM latency (s)")
    p.add_argument("--concurrency", type=int, default=220, help="worker threads")
    p.add_argument("--wide-sessions", type=int, default=250, help="0 skips the wide phase")
    p.add_argument("--wide-messages", type=int, default=2)
    p.add_argument(
        "--wide-delay",
        type=float,
        default=2.0,
        help="LLM latency in the wide phase (s): runs in flight = rate x latency",
    )
    p.add_argument("--pings", type=int, default=200, help="Celery no-op round trips")
    p.add_argument("--no-aof", action="store_true", help="redis without persistence")
    p.add_argument("--keep-home", action="store_true", help="keep the temp CLAW_HOME (logs)")
    return p.parse_args(argv)


def write_config(home: Path, redis_url: str, llm_port: int, port: int, concurrency: int) -> None:
    config = {
        "redis": {"url": redis_url},
        "providers": {
            "proxy": {
                "api_base": f"http://127.0.0.1:{llm_port}/v1",
                "api_key": "sk-bench-not-a-secret",
                "models": ["bench"],
            }
        },
        # The load comes from one address: rate limits would measure themselves.
        "gateway": {"port": port, "rate_limit": {"per_ip_per_min": 0, "per_sender_per_min": 0}},
        "worker": {"concurrency": max(200, concurrency)},
        "logging": {"level": "WARNING"},
    }
    (home / "config.json").write_text(json.dumps(config, indent=2))


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAW_", "OPENAI_"))}
    env.update(CLAW_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def start_fleet(args: argparse.Namespace, home: Path, procs: Procs) -> dict[str, Any]:
    from claw_worker.embedded_redis import find_redis_server

    rport, lport, iport = free_port(), free_port(), free_port()
    (home / "redis").mkdir()
    aof = (
        ["--appendonly", "no"]
        if args.no_aof
        else ["--appendonly", "yes", "--appendfsync", "everysec"]
    )
    procs.spawn("redis", [find_redis_server(), "--port", str(rport), "--bind", "127.0.0.1",
                          "--dir", str(home / "redis"), "--save", "", *aof])  # fmt: skip
    redis_url = f"redis://127.0.0.1:{rport}/0"
    procs.spawn("llm", [sys.executable, "-m", "tests.llm_server", "--port", str(lport),
                        "--delay", str(args.delay)])  # fmt: skip
    write_config(home, redis_url, lport, iport, args.concurrency)
    import redis

    wait_for(lambda: redis.Redis.from_url(redis_url).ping(), what="redis-server")
    llm_url = f"http://127.0.0.1:{lport}"
    wait_for(lambda: httpx.get(f"{llm_url}/health").status_code == 200, what="LLM server")
    procs.spawn("worker", [sys.executable, "-m", "celery", "-A", "claw_worker", "worker",
                           "--pool", "threads", "--concurrency", str(args.concurrency),
                           "-Q", QUEUES, "-n", "bench@%h", "--loglevel", "WARNING",
                           "--without-mingle", "--without-gossip"])  # fmt: skip
    procs.spawn("ingress", [sys.executable, "-m", "claw_ingress"])
    base_url = f"http://127.0.0.1:{iport}"

    def ingress_up() -> bool:
        procs.check_alive()
        return httpx.get(f"{base_url}/health").status_code == 200

    wait_for(ingress_up, timeout=60, what="ingress /health")
    return {"redis_url": redis_url, "llm_url": llm_url, "base_url": base_url}


def celery_pings(n: int, timeout: float = 10.0) -> list[float]:
    """Sequential round trips of the no-op task, from this process, with the result backend."""
    from claw_worker.celery_config import sender_app
    from claw_worker.config import current_config

    app = sender_app(current_config())

    def ping() -> float:
        start = time.perf_counter()
        # The app sets task_ignore_result=True: ask for the result explicitly.
        result = app.send_task("claw.health.ping", queue="health", ignore_result=False)
        assert result.get(timeout=timeout) == "pong"
        return (time.perf_counter() - start) * 1000

    wait_for(lambda: ping(), timeout=60, what="worker to answer claw.health.ping")
    for _ in range(10):  # warm the connections
        ping()
    samples = [ping() for _ in range(n)]
    app.close()
    return samples


def phase(
    urls: dict[str, Any], sampler: Sampler, prefix: str, sessions: int, messages: int, delay: float
) -> tuple[PhaseMetrics, Resources]:
    httpx.post(f"{urls['llm_url']}/_control/reset", json={}).raise_for_status()
    httpx.post(f"{urls['llm_url']}/_control/delay", json={"seconds": delay}).raise_for_status()
    sampler.reset()
    cpu0 = sampler.cpu()
    self0 = time.process_time()
    deadline = 60 + messages * delay * 3 + sessions * messages / 50
    data = asyncio.run(
        run_phase(
            base_url=urls["base_url"], redis_url=urls["redis_url"], llm_url=urls["llm_url"],
            prefix=prefix, sessions=sessions, messages=messages, deadline_sec=deadline,
        )
    )  # fmt: skip
    cpu1 = sampler.cpu()
    cpu = {n: cpu1[n] - cpu0[n] for n in cpu1}
    cpu["bench client"] = time.process_time() - self0
    res = Resources(dict(sampler.peak_kb), cpu)
    return analyse(data, delay), res


def _on_signal(signum: int, frame: Any) -> None:
    # Raised in the main thread wherever it is (also inside asyncio.run, which then cancels
    # its tasks), so the finally below stops the fleet.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sessions * args.messages > 9000:
        print("note: the LLM server records 10,000 requests: order checks may be partial")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    home = Path(tempfile.mkdtemp(prefix="clawbench-"))
    os.environ.pop("CLAW_CONFIG", None)
    os.environ["CLAW_HOME"] = str(home)  # the bench's own Celery app reads this config
    procs = Procs(home, child_env(home), REPO)
    main_m = wide_m = None
    try:
        t0 = time.monotonic()
        urls = start_fleet(args, home, procs)
        print(f"fleet up in {time.monotonic() - t0:.1f} s (CLAW_HOME {home})", flush=True)
        pids = {name: procs.started[name].pid for name in ("worker", "ingress", "redis", "llm")}
        sampler = Sampler(pids).start()
        pings = celery_pings(args.pings)
        print(f"celery no-op round trip: median {statistics.median(pings):.2f} ms", flush=True)
        warm, _ = phase(urls, sampler, "w", 2, 1, args.delay)  # imports the agent runtime
        if warm.errors:
            print("warm-up failed:", *problems(warm), sep="\n  ")
        main_m, main_r = phase(urls, sampler, "p1", args.sessions, args.messages, args.delay)
        print(
            f"main phase: {main_m.done}/{main_m.total} done in {main_m.wall_sec:.1f} s", flush=True
        )
        wide_r = None
        if args.wide_sessions > 0:
            wide_m, wide_r = phase(urls, sampler, "p2", args.wide_sessions, args.wide_messages,
                                   args.wide_delay)  # fmt: skip
            print(f"wide phase: {wide_m.done}/{wide_m.total} done, "
                  f"peak in flight {wide_m.peak_llm_concurrency}", flush=True)  # fmt: skip
        procs.check_alive()
        sampler.stop()
        import redis

        rc = redis.Redis.from_url(urls["redis_url"])
        meta_subs = len(rc.pubsub_channels("celery-task-meta-*"))
        rc.close()
        redis_mode = "no persistence" if args.no_aof else "AOF everysec"
        print()
        print(*host_lines(), sep="\n")
        print()
        print(table(main_m, wide_m, main_r, wide_r, pings, delay=args.delay,
                    concurrency=args.concurrency, redis_mode=redis_mode,
                    wide_delay=args.wide_delay))  # fmt: skip
        print(f"\nresult-backend channels still subscribed (celery-task-meta-*): {meta_subs}")
    except KeyboardInterrupt:
        print("interrupted: stopping the fleet", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    bad = problems(main_m, wide_m)
    if bad:
        print("\nPROBLEMS:", *bad, sep="\n  ")
    failed = any(m is not None and m.errors for m in (main_m, wide_m))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
