"""The transport layer against hostile input, over real HTTP and WebSockets.

A public bind without a token, wrong and missing tokens on every protected route, foreign
Origins and DNS-rebound Hosts on HTTP and /ws, oversized bodies and frames, and floods
against the rate limits, which live in Redis and so hold in total across two ingress
processes. Each attack is counted for the campaign (tests/campaign.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.campaign import record
from tests.fixtures.fleet import fleet_config
from tests.fixtures.procs import free_port, wait_for
from tests.platforms import qq_api
from tests.platforms.telegram_api import TOKEN as TELEGRAM_TOKEN
from tests.platforms.telegram_api import TelegramAPI

TOKEN = "transport-token-abcdefghijkl"
APP = "https://app.example.com"


def tracebacks(fleet: Any, name: str = "ingress") -> list[str]:
    texts = [fleet.output(name)]
    texts += [p.read_text(errors="replace") for p in (fleet.home.path / "logs").glob("ingress*")]
    return [line for text in texts for line in text.splitlines() if "Traceback" in line]


def handshake_status(port: int, headers: dict[str, str], path: str = "/ws") -> int:
    """The status a raw WebSocket handshake is answered with (101: accepted)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]  # fmt: skip
    headers = {"Host": f"127.0.0.1:{port}", **headers}
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


# -- 1. a public address needs a token ---------------------------------------------------------


def test_a_public_bind_without_a_token_refuses_to_start(
    claw_home, redis_server, llm_server, fleet_factory
) -> None:
    port = free_port()
    claw_home.write_config(fleet_config(redis_server.url, llm_server.base_url, port))
    tried = rejected = server_errors = 0
    for host in ("0.0.0.0", "::", "192.0.2.10", "claw.example.com"):
        result = subprocess.run(
            [sys.executable, "-m", "claw_ingress", "--host", host], env=claw_home.env(),
            cwd=claw_home.path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        tried += 1
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 2, (host, result.stdout, result.stderr)
        assert "gateway.token" in result.stderr and "allow_public_without_token" in result.stderr
        assert host in result.stderr
        rejected += 1
    # `clawctl gateway run` refuses before it starts anything (or restarts the ingress in
    # a loop).
    claw_home.write_config(fleet_config(redis_server.url, llm_server.base_url, port,
                                        gateway__host="0.0.0.0"))  # fmt: skip
    run = claw_home.clawctl("gateway", "run")
    tried += 1
    assert run.returncode != 0 and "gateway.token" in run.stderr, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    rejected += 1
    record("transport: public bind without a token", tried=tried, rejected=rejected,
           server_errors=server_errors)  # fmt: skip
    # Loopback needs nothing; a token, or the explicit override, lets a public bind start.
    for overrides in ({"gateway__token": TOKEN}, {"gateway__allow_public_without_token": True}):
        fleet = fleet_factory(**overrides)
        proc = fleet.start_ingress("--host", "0.0.0.0")
        assert httpx.get(f"{fleet.base_url}/health").status_code == 200
        fleet.stop()
        assert proc.poll() is not None
    fleet = fleet_factory()
    fleet.start_ingress()
    assert httpx.get(f"{fleet.base_url}/health").status_code == 200


# -- 2. tokens ---------------------------------------------------------------------------------


def test_wrong_or_missing_tokens_are_refused_on_every_protected_route(fleet_factory) -> None:
    fleet = fleet_factory(gateway__token=TOKEN)
    fleet.start_ingress()
    routes = [("POST", "/api/message", {"text": "hi"}), ("GET", "/api/messages/abc", None),
              ("POST", "/api/sessions/api:s/stop", None),
              ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
              ("GET", "/v1/models", None), ("GET", "/metrics", None),
              ("POST", "/nodes/register", {}), ("POST", "/nodes/heartbeat", {}),
              ("GET", "/ws", None)]  # fmt: skip
    wrong = [None, "Bearer wrong", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", TOKEN,
             f"Basic {base64.b64encode(TOKEN.encode()).decode()}", f"Bearer  {TOKEN}",
             "Bearer " + "A" * 4096]  # fmt: skip
    tried = rejected = server_errors = 0
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        for method, path, body in routes:
            for auth in wrong:
                headers = {"Authorization": auth} if auth else {}
                resp = http.request(method, path, json=body, headers=headers)
                tried += 1
                server_errors += resp.status_code >= 500
                rejected += resp.status_code == 401
                assert resp.status_code == 401, (method, path, auth, resp.text)
        # The right token passes, the scheme's name in any case (RFC 9110): clients send
        # "bearer" too, and were refused on HTTP while /ws took them.
        for scheme in ("Bearer", "bearer", "BEARER"):
            ok = http.get("/v1/models", headers={"Authorization": f"{scheme} {TOKEN}"})
            assert ok.status_code == 200, scheme

    async def websockets() -> int:
        refused = 0
        for path, kwargs in [("/ws", {}), ("/ws?token=wrong", {}),
                             ("/ws", {"additional_headers": {"Authorization": "Bearer no"}}),
                             (f"/ws?token={TOKEN[:-1]}", {}),
                             ("/nodes/connect", {"additional_headers": {"X-Node-Id": "n1"}})]:  # fmt: skip
            async with connect(f"ws://127.0.0.1:{fleet.port}{path}", **kwargs) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            refused += 1
        return refused

    refused = asyncio.run(websockets())
    record("transport: wrong or missing token", tried=tried + 5, rejected=rejected + refused,
           server_errors=server_errors)  # fmt: skip
    assert server_errors == 0 and not tracebacks(fleet)
    assert TOKEN not in fleet.output("ingress")


# -- 3/4. Origins (CORS, /ws) and DNS rebinding ---------------------------------------------------


FOREIGN_ORIGINS = ["https://evil.example", "null", "http://app.example.com",
                   "https://app.example.com.evil.example", "https://app.example.com:8443",
                   "https://evil.example/https://app.example.com", "file://"]  # fmt: skip
REBOUND_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io",
                 "localhost.evil.example", "10.0.0.1"]  # fmt: skip


def test_foreign_origins_are_refused_on_http_and_ws(fleet_factory) -> None:
    fleet = fleet_factory(gateway__allowed_origins=[APP])
    fleet.start_ingress()
    tried = rejected = server_errors = 0
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        for origin in FOREIGN_ORIGINS:
            preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "content-type"}  # fmt: skip
            for resp in (http.post("/api/message", json={"text": "hi"}, headers={"Origin": origin}),
                         http.get("/v1/models", headers={"Origin": origin}),
                         http.options("/api/message", headers=preflight)):  # fmt: skip
                tried += 1
                server_errors += resp.status_code >= 500
                cors = [h for h in resp.headers if h.lower().startswith("access-control-")]
                if resp.status_code == 403 and not cors:
                    rejected += 1
                assert resp.status_code == 403 and not cors, (origin, resp.status_code, cors)
            status = handshake_status(fleet.port, {"Origin": origin})
            tried += 1
            rejected += status == 403
            assert status == 403, (origin, status)
        # The listed origin is let in, and only it is named.
        resp = http.options("/api/message", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert resp.status_code == 204 and resp.headers["access-control-allow-origin"] == APP
        assert handshake_status(fleet.port, {"Origin": APP}) == 101
        assert handshake_status(fleet.port, {}) == 101  # no Origin: not a browser
    record("transport: foreign Origin (HTTP, CORS, /ws)", tried=tried, rejected=rejected,
           server_errors=server_errors)  # fmt: skip
    assert server_errors == 0 and not tracebacks(fleet)


def test_dns_rebound_hosts_are_refused_on_http_and_ws(fleet_factory) -> None:
    fleet = fleet_factory()
    fleet.start_ingress()
    tried = rejected = server_errors = 0
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        for pattern in REBOUND_HOSTS:
            host = pattern.format(port=fleet.port)
            for resp in (http.post("/api/message", json={"text": "hi"}, headers={"Host": host}),
                         http.get("/health", headers={"Host": host}),
                         http.get("/v1/models", headers={"Host": host})):  # fmt: skip
                tried += 1
                server_errors += resp.status_code >= 500
                rejected += resp.status_code == 421
                assert resp.status_code == 421, (host, resp.text)
            status = handshake_status(fleet.port, {"Host": host})
            tried += 1
            rejected += status == 403
            assert status == 403, (host, status)
    record("transport: DNS-rebinding Host (HTTP, /ws)", tried=tried, rejected=rejected,
           server_errors=server_errors)  # fmt: skip
    assert server_errors == 0 and not tracebacks(fleet)


# -- body and frame sizes -------------------------------------------------------------------------


LIMIT = 64 * 1024


def test_oversized_bodies_get_413_on_every_route(fleet_factory) -> None:
    qq = qq_api.QQAPI().start()  # a started channel, whose webhook reads its raw body
    try:
        oversized_bodies(fleet_factory, qq)
    finally:
        qq.stop()


def oversized_bodies(fleet_factory: Any, qq: qq_api.QQAPI) -> None:
    # The OpenAI chat route's own, larger limit brought down to the rest's.
    fleet = fleet_factory(gateway__max_body_bytes=LIMIT, gateway__max_openai_body_bytes=LIMIT,
                          channels__qq={
        "enabled": True, "app_id": qq_api.APP_ID, "secret": qq_api.SECRET, "api_base": qq.url,
        "token_url": qq.token_url})  # fmt: skip
    fleet.start_ingress()
    ready = json.dumps({"op": 12}).encode()
    wait_for(lambda: httpx.post(f"{fleet.base_url}/webhooks/qq/", content=ready,
                                headers=qq_api.signed(ready)).status_code == 200,
             timeout=30, what="the qq webhook")  # fmt: skip
    paths = ["/api/message", "/v1/chat/completions", "/nodes/register", "/nodes/heartbeat",
             "/api/sessions/api:s/stop", "/webhooks/qq/", "/webhooks/whatsapp/"]  # fmt: skip
    tried = rejected = server_errors = 0

    def chunks(total: int) -> Any:
        sent = 0
        while sent < total:
            yield b" " * 8192
            sent += 8192

    with httpx.Client(base_url=fleet.base_url, timeout=60) as http:
        for path in paths:
            for size in (LIMIT + 1, 10 * LIMIT, 4 * 1024 * 1024):
                body = json.dumps({"text": "x" * size}).encode()
                resp = http.post(path, content=body, headers={"Content-Type": "application/json"})
                tried += 1
                server_errors += resp.status_code >= 500
                rejected += resp.status_code == 413
                assert resp.status_code == 413, (path, size, resp.status_code)
            if path.endswith("/stop"):  # reads no body: answers before one is sent
                continue
            # Chunked: no Content-Length to refuse up front; cut off once over the limit.
            try:
                resp = http.post(path, content=chunks(8 * LIMIT),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
                status = resp.status_code
            except httpx.TransportError:  # closed while we were still sending: refused too
                status = 413
            tried += 1
            server_errors += status >= 500
            rejected += 400 <= status < 500
            assert 400 <= status < 500, (path, status)
        assert http.get("/health").status_code == 200
    record("transport: oversized bodies", tried=tried, rejected=rejected,
           server_errors=server_errors)  # fmt: skip
    assert server_errors == 0 and not tracebacks(fleet)


def test_oversized_frames_close_the_websocket_with_1009(fleet_factory) -> None:
    fleet = fleet_factory(gateway__max_body_bytes=LIMIT, gateway__max_frame_bytes=8 * 1024)
    fleet.start_ingress()
    frames: list[str | bytes] = [
        json.dumps({"type": "message", "text": "x" * 9000}),
        "é" * 5000,  # 5000 characters, 10000 bytes
        b"\x00" * 9000,
        json.dumps({"type": "message", "text": "y" * (LIMIT * 4)}),  # over uvicorn's own cap
    ]

    async def scenario() -> int:
        closed_1009 = 0
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:  # under the limit: fine
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
        for frame in frames:
            async with connect(f"ws://127.0.0.1:{fleet.port}/ws", max_size=None) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.send(frame)
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None, frame[:20]
            assert closed.value.rcvd.code == 1009, closed.value.rcvd
            closed_1009 += 1
        return closed_1009

    refused = asyncio.run(scenario())
    record("transport: oversized /ws frames", tried=len(frames), rejected=refused)
    assert refused == len(frames) and not tracebacks(fleet)


# -- 5. rate limits in Redis, across replicas ---------------------------------------------------


def second_ingress(fleet: Any) -> str:
    """Another ingress process on the same config and Redis (a replica); its base URL."""
    port = free_port()
    proc = fleet._spawn("ingress2", [sys.executable, "-m", "claw_ingress", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return proc.poll() is not None or httpx.get(f"{url}/health").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=30, what="the second ingress")
    assert proc.poll() is None, fleet.output("ingress2")
    return url


def test_the_per_address_limit_holds_in_total_across_two_replicas(fleet_factory) -> None:
    burst, per_min = 10, 60  # one token a second after the burst
    fleet = fleet_factory(gateway__rate_limit={"per_ip_per_min": per_min, "per_ip_burst": burst,
                                               "per_sender_per_min": 0})  # fmt: skip
    fleet.start_ingress()
    urls = [fleet.base_url, second_ingress(fleet)]
    started = time.monotonic()
    statuses, retry_after = [], []
    with httpx.Client(timeout=30) as http:
        for n in range(60):
            resp = http.get(f"{urls[n % 2]}/v1/models")
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                retry_after.append(int(resp.headers["Retry-After"]))
                assert "gateway.rate_limit" in resp.json()["error"]["message"]  # OpenAI's shape
        elapsed = time.monotonic() - started
        # /health is never limited: probes answer whatever a client does.
        assert all(http.get(f"{url}/health").status_code == 200 for url in urls for _ in range(20))
    allowance = burst + int(elapsed * per_min / 60) + 1
    passed, limited = statuses.count(200), statuses.count(429)
    assert passed + limited == len(statuses), statuses
    assert burst <= passed <= allowance, (passed, allowance, elapsed)
    assert retry_after and all(value >= 1 for value in retry_after)
    record("rate limit: per-address flood over 2 replicas", tried=len(statuses),
           rejected=limited, escapes=max(0, passed - allowance))  # fmt: skip
    assert not tracebacks(fleet) and not tracebacks(fleet, "ingress2")


def test_an_ipv6_client_cannot_multiply_its_allowance_across_its_64(fleet_factory) -> None:
    """A host holds a whole /64: counted per exact address, each new address would bring a
    fresh bucket. Behind a trusted proxy the forwarded addresses stand for the clients."""
    burst = 4
    fleet = fleet_factory(
        gateway__trusted_proxies=["127.0.0.1"],
        gateway__rate_limit={"per_ip_per_min": 1, "per_ip_burst": burst, "per_sender_per_min": 0},
    )
    fleet.start_ingress()
    statuses = []
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        for n in range(1, 13):  # twelve addresses of one /64
            resp = http.get("/v1/models", headers={"X-Forwarded-For": f"2001:db8:7:7::{n:x}"})
            statuses.append(resp.status_code)
        other = http.get("/v1/models", headers={"X-Forwarded-For": "2001:db8:7:8::1"})
    assert statuses[:burst] == [200] * burst and set(statuses[burst:]) == {429}, statuses
    assert other.status_code == 200  # another /64 has its own bucket
    limited = statuses.count(429)
    record("rate limit: one IPv6 /64, many addresses", tried=len(statuses), rejected=limited,
           escapes=len(statuses) - burst - limited)  # fmt: skip


def test_the_per_sender_limit_holds_on_the_apis_and_ws_across_replicas(fleet_factory) -> None:
    burst, per_min = 3, 6  # one message every 10 s after the burst
    fleet = fleet_factory(gateway__rate_limit={"per_ip_per_min": 0, "per_sender_per_min": per_min,
                                               "per_sender_burst": burst})  # fmt: skip
    fleet.start_ingress()
    urls = [fleet.base_url, second_ingress(fleet)]
    tried = limited = 0
    with httpx.Client(timeout=30) as http:
        # The HTTP API: one sender, alternating replicas.
        answers = [http.post(f"{urls[n % 2]}/api/message",
                             json={"text": f"flood {n}", "sender_id": "flooder",
                                   "session": "api:flood"}) for n in range(12)]  # fmt: skip
        codes = [a.status_code for a in answers]
        assert codes.count(202) <= burst + 1 and codes.count(429) >= 12 - burst - 1, codes
        assert set(codes) <= {202, 429}
        assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
        tried, limited = tried + 12, limited + codes.count(429)
        # Another sender is served meanwhile.
        calm = http.post(urls[0] + "/api/message", json={"text": "hi", "sender_id": "calm"})
        assert calm.status_code == 202
        # The OpenAI API: its sender is the session (the "user" field), in OpenAI's shape.
        body = {"messages": [{"role": "user", "content": "x"}], "user": "flood-user"}
        replies = [http.post(f"{urls[n % 2]}/v1/chat/completions", json=body,
                             headers={"X-Claw-Timeout": "1"}) for n in range(8)]  # fmt: skip
        refused = [r for r in replies if r.status_code == 429]
        assert len(refused) >= 8 - burst - 1, [r.status_code for r in replies]
        assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
        assert all(r.status_code < 500 or r.status_code == 504 for r in replies)
        tried, limited = tried + 8, limited + len(refused)

    async def ws_flood() -> tuple[int, int]:
        errors = 0
        async with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
            for n in range(8):
                await ws.send(json.dumps({"type": "message", "text": f"ws {n}",
                                          "session": "ws-flood"}))  # fmt: skip
            deadline = time.monotonic() + 20
            seen = 0
            while seen < 8 and time.monotonic() < deadline:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if frame["type"] in ("status", "error"):
                    seen += 1
                    if frame["type"] == "error":
                        assert frame["retry_after_sec"] >= 1 and "too many" in frame["error"]
                        errors += 1
        return 8, errors

    ws_tried, ws_limited = asyncio.run(ws_flood())
    assert ws_limited >= 8 - burst - 1
    tried, limited = tried + ws_tried, limited + ws_limited
    allowance = 3 * (burst + 1)  # three senders, each its burst and at most one refill
    record("rate limit: per-sender flood (API, OpenAI, /ws) over 2 replicas", tried=tried,
           rejected=limited, escapes=max(0, tried - limited - allowance))  # fmt: skip
    assert tried - limited <= allowance
    assert "sender over its rate limit" in fleet.output("ingress") + fleet.output("ingress2") or (
        any("rate limit" in p.read_text() for p in (fleet.home.path / "logs").glob("ingress*"))
    )
    assert not tracebacks(fleet) and not tracebacks(fleet, "ingress2")


def test_the_limiter_fails_open_when_redis_is_down(fleet_factory, redis_server) -> None:
    """Without Redis the limiter lets requests through (and says so once): what then refuses
    a message is the mailbox, with its own clear 503, never a limiter traceback."""
    fleet = fleet_factory(gateway__rate_limit={"per_ip_per_min": 60, "per_ip_burst": 5,
                                               "per_sender_per_min": 6})  # fmt: skip
    fleet.start_ingress()
    redis_server.stop()
    with httpx.Client(base_url=fleet.base_url, timeout=30) as http:
        codes = [http.get("/v1/models").status_code for _ in range(10)]
        assert codes == [200] * 10  # no 429: not limited, not failed
        resp = http.post("/api/message", json={"text": "hi"})
        assert resp.status_code == 503 and "retry later" in resp.json()["error"]
    wait_for(lambda: "rate limiter unavailable" in fleet.output("ingress") or any(
        "rate limiter unavailable" in p.read_text() for p in (fleet.home.path / "logs").glob("ingress*")),
        timeout=10, what="the fail-open warning")  # fmt: skip
    assert not tracebacks(fleet)


def test_a_chat_sender_over_its_limit_is_dropped_and_told_once(fleet_factory) -> None:
    """Telegram (polling): messages over the sender's limit never reach a mailbox, each is a
    log line, and the sender gets one "slow down" answer a minute, not one per message."""
    api = TelegramAPI().start()
    try:
        fleet = fleet_factory(
            gateway__rate_limit={"per_ip_per_min": 0, "per_sender_per_min": 6,
                                 "per_sender_burst": 2},
            channels__telegram={"enabled": True, "token": TELEGRAM_TOKEN,
                                "api_base": api.base_url, "allow_from": ["4242"]},
        )  # fmt: skip
        fleet.start_ingress()
        for n in range(8):
            api.push_message(4242, f"chat flood {n}")
        notices = wait_for(lambda: [c for c in api.sent(4242) if "too fast" in c.text] or None,
                           timeout=30, what="the slow-down answer")  # fmt: skip
        wait_for(lambda: fleet.output("ingress").count("over its rate limit") >= 5 or sum(
            p.read_text().count("over its rate limit")
            for p in (fleet.home.path / "logs").glob("ingress*")) >= 5,
            timeout=30, what="a log line per dropped message")  # fmt: skip
        stored = [t for t in mailbox_texts(fleet.redis.url) if t.startswith("chat flood")]
        assert len(notices) == 1 and 2 <= len(stored) <= 3, (notices, stored)
        record("rate limit: chat sender flood (telegram)", tried=8, rejected=8 - len(stored),
               escapes=max(0, len(stored) - 3))  # fmt: skip
        assert not tracebacks(fleet)
    finally:
        api.stop()


def mailbox_texts(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [json.loads(raw)["text"] for key in client.scan_iter("claw:mbox:*")
                for raw in client.lrange(key, 0, -1)]  # fmt: skip
    finally:
        client.close()
