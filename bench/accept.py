"""Accept-path benchmark: ``python -m bench.accept [--rounds 5 --duration 6]``.

The ingress (no worker running) next to a floor (``bench/floor.py``: bare Starlette on
uvicorn with uvloop and httptools, parsing the same body and storing it with one Lua call),
all loaded by ``wrk`` (``bench/accept.lua``) in the same run, turn about: for each round,
each connection count and each route, the floor, the ingress as configured by default
(logging at INFO, to the JSON log file and stderr; its "message received" line is at DEBUG)
and a second ingress with ``logging.level`` WARNING, in an order
rotated every round, ``--duration`` seconds each. Prints host facts, the medians per route
and connection count (req/s, p50, p99, CPU) and each ingress's ratio to the floor (the
median of the rounds' paired ratios); writes every measurement to ``--json`` if given.

Routes: ``api`` (``POST /api/message``, answered 202 once stored), ``whatsapp`` (a signed
WhatsApp Cloud API notification to ``/webhooks/whatsapp/``, each with its own wamid) and
``chat`` (``POST /v1/chat/completions`` with ``X-Claw-Timeout: 0.001``: the route stores the
message, waits 1 ms for a reply that cannot come, polls the message record once and answers
504; an upper bound of what the route costs up to storing the message).

Every measurement is checked: the messages stored (the sessions' mailbox lengths, or the
floor's counter) must match the answers counted, and no answer may be an error other than
the chat route's expected 504. Processes run in their own groups and are stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.fleet import child_env
from bench.procs import Procs, cpu_sec, free_port, wait_for
from bench.report import host_lines
from claw_worker import constants as k
from tests.platforms.whatsapp_api import (
    ACCESS_TOKEN,
    APP_SECRET,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    GraphAPI,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_name("accept.lua")
TOKEN = "bench-accept-token-0123456789"
ROUTES = ("api", "chat", "whatsapp")
TARGETS = ("floor", "ingress", "ingress-warn")
LEVELS = {"ingress": "INFO", "ingress-warn": "WARNING"}
# What the ingress answers when all is well (the chat route's 504: its wait timed out); the
# floor answers 202.
EXPECTED = {"api": 202, "chat": 504, "whatsapp": 200}
NAMES = {
    "api": "POST /api/message",
    "chat": "POST /v1/chat/completions (1 ms wait)",
    "whatsapp": "POST /webhooks/whatsapp/ (signed)",
}


@dataclass
class Sample:
    round: int
    route: str
    connections: int
    target: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    stored: int
    server_cpu: float  # share of one core during the measurement
    redis_cpu: float
    wrk_cpu: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds per target and route")
    p.add_argument("--connections", default="50,400", help="comma-separated")
    p.add_argument(
        "--routes", default=",".join(ROUTES), help="comma-separated, of " + "/".join(ROUTES)
    )
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--sessions", type=int, default=200, help="sessions (chats) per route")
    p.add_argument("--no-warn", action="store_true", help="skip the ingress at WARNING")
    p.add_argument("--ingress-root", type=Path, default=REPO,
                   help="run the ingresses from this tree (to compare with another version)")  # fmt: skip
    p.add_argument("--ingress-args", default="", help="extra claw-ingress arguments")
    p.add_argument("--no-aof", action="store_true", help="redis without persistence")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--keep-home", action="store_true", help="keep the temp CLAW_HOME (logs)")
    return p.parse_args(argv)


def write_config(
    path: Path, redis_url: str, port: int, graph: GraphAPI, sessions: int, level: str
) -> None:
    config = {
        "redis": {"url": redis_url},
        # The load comes from one address: rate limits would measure themselves.
        "gateway": {"port": port, "token": TOKEN,
                    "rate_limit": {"per_ip_per_min": 0, "per_sender_per_min": 0}},
        "logging": {"level": level},
        "channels": {
            "whatsapp": {
                "enabled": True, "mode": "cloud", "api_base": graph.api_base,
                "access_token": ACCESS_TOKEN, "phone_number_id": PHONE_NUMBER_ID,
                "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN,
                "dm_policy": "allowlist", "allow_from": [whatsapp_sender(i) for i in range(sessions)],
            }
        },
    }  # fmt: skip
    path.write_text(json.dumps(config, indent=2))


def whatsapp_sender(i: int) -> str:
    return f"1555000{i:04d}"  # as bench/accept.lua numbers them


def session_keys(route: str, sessions: int) -> list[str]:
    """The ingress's session keys for the messages accept.lua sends on ``route``."""
    if route == "api":
        return [f"api:bench-{i}" for i in range(sessions)]
    if route == "chat":
        return [f"openai:bench-{i}" for i in range(sessions)]
    return [f"whatsapp:{whatsapp_sender(i)}" for i in range(sessions)]


def start(args: argparse.Namespace, home: Path, procs: Procs, graph: GraphAPI) -> dict[str, Any]:
    from claw_worker.embedded_redis import find_redis_server

    rport, fport = free_port(), free_port()
    (home / "redis").mkdir()
    aof = ["--appendonly", "yes", "--appendfsync", "everysec"]
    procs.spawn("redis", [find_redis_server(), "--port", str(rport), "--bind", "127.0.0.1",
                          "--dir", str(home / "redis"), "--save", "",
                          *(["--appendonly", "no"] if args.no_aof else aof)])  # fmt: skip
    redis_url = f"redis://127.0.0.1:{rport}/0"
    wait_for(lambda: redis.Redis.from_url(redis_url).ping(), what="redis-server")
    procs.spawn("floor", [sys.executable, "-m", "bench.floor", "--port", str(fport),
                          "--redis", redis_url])  # fmt: skip
    urls = {"floor": f"http://127.0.0.1:{fport}"}
    root = args.ingress_root.resolve()
    if root != REPO:
        procs.env, procs.cwd = {**procs.env, "PYTHONPATH": str(root)}, root
    for name in targets(args)[1:]:
        port, config = free_port(), home / f"{name}.json"
        write_config(config, redis_url, port, graph, args.sessions, LEVELS[name])
        procs.spawn(name, [sys.executable, "-m", "claw_ingress", "--config", str(config),
                           *args.ingress_args.split()])  # fmt: skip
        urls[name] = f"http://127.0.0.1:{port}"
    procs.env, procs.cwd = child_env(home), REPO

    def answers(target: str, path: str, status: int) -> bool:
        procs.check_alive()
        return httpx.get(urls[target] + path).status_code == status

    wait_for(lambda: answers("floor", "/api/message", 405), timeout=30, what="floor")
    for name in targets(args)[1:]:
        wait_for(lambda n=name: answers(n, "/health", 200), timeout=60, what=f"{name} /health")
        # The channel has started once its webhook answers (403: a verification, no token).
        wait_for(lambda n=name: answers(n, "/webhooks/whatsapp/", 403), timeout=30,
                 what=f"{name} webhook")  # fmt: skip
    return {"redis_url": redis_url, "urls": urls}


def targets(args: argparse.Namespace) -> tuple[str, ...]:
    return TARGETS[:2] if args.no_warn else TARGETS


def stored_count(client: redis.Redis, target: str, route: str, sessions: int) -> int:
    if target == "floor":
        return int(client.get("bench:floor:stored") or 0)
    with client.pipeline(transaction=False) as pipe:
        for key in session_keys(route, sessions):
            pipe.llen(k.mailbox_key(key))
        return sum(pipe.execute())


def run_wrk(url: str, route: str, conns: int, seconds: float, run: str,
            args: argparse.Namespace) -> tuple[dict[str, Any], float]:  # fmt: skip
    """One wrk run: its summary line, and the CPU seconds wrk used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = ["wrk", "-t", str(args.threads), "-c", str(conns), "-d", f"{seconds:g}s",
           "--timeout", "10s", "-s", str(SCRIPT), url, "--",
           route, run, str(args.sessions), TOKEN, APP_SECRET]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ACCEPT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(line.removeprefix("ACCEPT ")), cpu


def measure(ctx: dict[str, Any], procs: Procs, client: redis.Redis, args: argparse.Namespace,
            rnd: int, route: str, conns: int, target: str) -> Sample:  # fmt: skip
    run = f"r{rnd}c{conns}{TARGETS.index(target)}t{time.monotonic_ns() % 10**9}"
    pids = {name: procs.started[name].pid for name in (target, "redis")}
    stored0 = stored_count(client, target, route, args.sessions)
    cpu0 = {name: cpu_sec(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    res, wrk_cpu = run_wrk(ctx["urls"][target], route, conns, args.duration, run, args)
    wall = time.monotonic() - t0
    cpu1 = {name: cpu_sec(pid) for name, pid in pids.items()}
    procs.check_alive()
    # Requests wrk gave up on at the end may still be stored after it stopped.
    wait_for(lambda: stored_count(client, target, route, args.sessions) - stored0
             >= res["requests"], timeout=10, what="the answered messages to be stored")  # fmt: skip
    time.sleep(0.2)
    stored = stored_count(client, target, route, args.sessions) - stored0
    errors = {e: res[e] for e in ("connect", "read", "write", "timeout") if res[e]}
    expected = 202 if target == "floor" else EXPECTED[route]
    bad_status = res["status"] if expected < 300 else res["requests"] - res["status"]
    if errors or bad_status or not res["requests"] <= stored <= res["requests"] + conns:
        raise RuntimeError(f"{target} {route} c{conns}: {res['requests']} answered, "
                           f"{stored} stored, unexpected statuses {bad_status}, errors {errors}")  # fmt: skip
    return Sample(
        round=rnd, route=route, connections=conns, target=target, requests=res["requests"],
        rps=res["requests"] / (res["duration_us"] / 1e6), p50_ms=res["p50_us"] / 1000,
        p99_ms=res["p99_us"] / 1000, stored=stored,
        server_cpu=(cpu1[target] - cpu0[target]) / wall,
        redis_cpu=(cpu1["redis"] - cpu0["redis"]) / wall, wrk_cpu=wrk_cpu / wall,
    )  # fmt: skip


def check_answers(urls: dict[str, str]) -> None:
    """One message per target before wrk runs, so a wrong answer is named (wrk only counts
    the answers that are not 2xx or 3xx; those are checked per measurement)."""
    for target, url in urls.items():
        resp = httpx.post(url + "/api/message", json={"text": "hi", "session": "api:bench-0"},
                          headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        if resp.status_code != 202:
            raise RuntimeError(f"{target}: /api/message answered {resp.status_code}: {resp.text}")


def table(
    samples: list[Sample], routes: list[str], conns: list[int], names: tuple[str, ...]
) -> str:
    ingresses = names[1:]
    head = ["route", "conns", "floor req/s"]
    head += [f"{t} req/s (ratio)" for t in ingresses]
    head += ["p50 / p99 ms: " + " · ".join(names), "CPU " + " / ".join([*names, "redis", "wrk"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for route in routes:
        for c in conns:
            got = {t: [s for s in samples if (s.route, s.connections, s.target) == (route, c, t)]
                   for t in names}  # fmt: skip
            if not all(got.values()):
                continue
            med = {t: {f: statistics.median(getattr(s, f) for s in got[t])
                       for f in ("rps", "p50_ms", "p99_ms", "server_cpu", "redis_cpu", "wrk_cpu")}
                   for t in names}  # fmt: skip
            floor = {s.round: s.rps for s in got["floor"]}
            cells = [NAMES[route], str(c), f"{med['floor']['rps']:,.0f}"]
            for t in ingresses:
                ratio = statistics.median(
                    s.rps / floor[s.round] for s in got[t] if s.round in floor
                )
                cells.append(f"{med[t]['rps']:,.0f} ({ratio:.2f})")
            cells.append(
                " · ".join(f"{med[t]['p50_ms']:.1f} / {med[t]['p99_ms']:.0f}" for t in names)
            )
            cpu = [med[t]["server_cpu"] for t in names]
            cpu += [statistics.median(s.redis_cpu for t in names for s in got[t]),
                    statistics.median(s.wrk_cpu for t in names for s in got[t])]  # fmt: skip
            cells.append(" / ".join(f"{x:.0%}" for x in cpu))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.accept needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    routes = [r for r in args.routes.split(",") if r]
    conns = [int(c) for c in args.connections.split(",") if c]
    names = targets(args)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    home = Path(tempfile.mkdtemp(prefix="clawaccept-"))
    procs = Procs(home, child_env(home), REPO)
    graph = GraphAPI().start()  # the WhatsApp channel checks its token at start
    samples: list[Sample] = []
    try:
        ctx = start(args, home, procs, graph)
        client = redis.Redis.from_url(ctx["redis_url"])
        check_answers(ctx["urls"])
        print(f"up (CLAW_HOME {home}); warming up", flush=True)
        for route in routes:
            for target in names:
                run_wrk(ctx["urls"][target], route, max(conns), args.warmup, "warm", args)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for c in conns:
                for route in routes:
                    for target in order:
                        s = measure(ctx, procs, client, args, rnd, route, c, target)
                        samples.append(s)
                        print(f"round {rnd + 1} c{c} {route:8} {target:12} {s.rps:7,.0f} req/s "
                              f"p99 {s.p99_ms:6.1f} ms  cpu {s.server_cpu:.0%} "
                              f"redis {s.redis_cpu:.0%} wrk {s.wrk_cpu:.0%}", flush=True)  # fmt: skip
        client.close()
        print()
        print(*host_lines(), sep="\n")
        aof = "no persistence" if args.no_aof else "AOF everysec"
        print(f"wrk {args.threads} thread(s), {args.duration:g} s per measurement, "
              f"{args.rounds} rounds (medians), redis-server {aof}")  # fmt: skip
        print()
        print(table(samples, routes, conns, names))
    except KeyboardInterrupt:
        print("interrupted: stopping", file=sys.stderr)
        return 130
    finally:
        if args.json and samples:
            args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
        procs.stop_all()
        graph.stop()
        if args.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("CLAW_CONFIG", None)
    sys.exit(main())
