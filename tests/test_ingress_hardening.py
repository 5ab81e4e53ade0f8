"""The ingress against hostile input, over real HTTP and raw sockets.

Cross-site writes (a web page POSTing text/plain, a foreign Origin, a DNS-rebound Host),
admin commands from senders who are not admins, bodies that would crash a JSON parser, and
clients that stall or flood: each gets a clear 4xx/503, nothing changes, and the log has no
traceback.
"""

from __future__ import annotations

import gzip
import json
import selectors
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from claw_worker import constants as k
from tests.fixtures.procs import wait_for

TOKEN = "gw-token-abcdefghijkl"
ATTACK = "/config set tools.restrict_to_workspace false"


def say(http: httpx.Client, text: str, **extra: Any) -> httpx.Response:
    return http.post("/api/message", json={"text": text, "session": "api:hard", **extra})


def tracebacks(fleet: Any) -> list[str]:
    """Lines of the ingress's output and log files that belong to a traceback."""
    texts = [fleet.output("ingress")]
    texts += [p.read_text(errors="replace") for p in (fleet.home.path / "logs").glob("ingress*")]
    return [line for text in texts for line in text.splitlines() if "Traceback" in line]


def log_events(fleet: Any) -> list[dict[str, Any]]:
    events = []
    for path in (fleet.home.path / "logs").glob("ingress*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# -- cross-site writes ---------------------------------------------------------------------


def test_a_text_plain_post_is_refused_and_the_config_is_unchanged(fleet_factory, claw_home):
    fleet = fleet_factory()
    fleet.start_ingress()
    before = claw_home.config_file.read_bytes()
    body = json.dumps({"text": ATTACK}).encode()
    with fleet.client() as http:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            resp = http.post("/api/message", content=body, headers={"Content-Type": ctype})
            assert resp.status_code == 415, (ctype, resp.text)
            assert "application/json" in resp.json()["error"]
        resp = http.post("/api/message", content=body)  # a body with no type at all
        assert resp.status_code == 415
        resp = http.post("/api/sessions/api:s/stop", content=b"x", headers={"Content-Type": "text/plain"})  # fmt: skip
        assert resp.status_code == 415
        assert claw_home.config_file.read_bytes() == before
        # A compressed body is refused naming its encoding (it was "not UTF-8 JSON", 422).
        packed = gzip.compress(json.dumps({"text": "hi"}).encode())
        for path in ("/api/message", "/v1/chat/completions"):
            resp = http.post(path, content=packed, headers={"Content-Type": "application/json",
                                                            "Content-Encoding": "gzip"})  # fmt: skip
            assert resp.status_code == 415, (path, resp.text)
            assert "Content-Encoding 'gzip' is not accepted" in resp.text
        # JSON, with or without a charset, is what the API takes.
        ok = {"Content-Type": "application/json; charset=utf-8"}
        resp = http.post("/api/message", content=json.dumps({"text": "/help"}), headers=ok)
        assert resp.status_code == 200 and "/status" in resp.json()["reply"]
        assert http.post("/api/sessions/api:s/stop").status_code == 200  # no body, no type


def test_a_foreign_origin_is_refused_and_cors_stays_closed(fleet_factory, claw_home):
    fleet = fleet_factory(gateway__allowed_origins=["https://app.example.com"])
    fleet.start_ingress()
    before = claw_home.config_file.read_bytes()
    evil = {"Origin": "https://evil.example"}
    with fleet.client() as http:
        resp = http.post("/api/message", json={"text": ATTACK}, headers=evil)
        assert resp.status_code == 403 and "https://evil.example" in resp.json()["error"]
        assert "gateway.allowed_origins" in resp.json()["error"]
        assert http.post("/api/message", json={"text": "hi"}, headers={"Origin": "null"}).status_code == 403  # fmt: skip
        assert http.get("/api/messages/abc", headers=evil).status_code == 403
        preflight = {**evil, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}  # fmt: skip
        resp = http.options("/api/message", headers=preflight)
        assert resp.status_code >= 400
        assert not any(h.lower().startswith("access-control-") for h in resp.headers)
        # No Origin (curl, a backend): no CORS headers either.
        resp = say(http, "/help")
        assert resp.status_code == 200
        assert not any(h.lower().startswith("access-control-") for h in resp.headers)
        # The configured origin may call the API, and only it is named.
        app = {"Origin": "https://app.example.com"}
        resp = http.options("/api/message", headers={**preflight, **app})
        assert resp.status_code == 204
        assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
        resp = http.post("/api/message", json={"text": "/help"}, headers=app)
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
    assert claw_home.config_file.read_bytes() == before


def test_a_dns_rebound_host_is_refused(fleet_factory):
    fleet = fleet_factory(gateway__allowed_hosts=["claw.lan"])
    fleet.start_ingress()
    port = fleet.port
    with fleet.client() as http:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.1"):
            resp = http.post("/api/message", json={"text": ATTACK}, headers={"Host": host})
            assert resp.status_code == 421, (host, resp.text)
            assert "gateway.allowed_hosts" in resp.json()["error"]
        assert http.get("/health", headers={"Host": "evil.example"}).status_code == 421
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"[::1]:{port}", "[::1]",
                     "LOCALHOST.", "claw.lan", f"claw.lan:{port}"):  # fmt: skip
            assert http.get("/health", headers={"Host": host}).status_code == 200, host


def test_admin_commands_need_a_listed_sender_with_the_token(fleet_factory, claw_home):
    fleet = fleet_factory(gateway__token=TOKEN, gateway__admins=["api:alice"])
    fleet.start_ingress()
    before = claw_home.config_file.read_bytes()
    with fleet.client(TOKEN) as http:
        for sender in ("", "bob", "ALICE"):
            for text in (ATTACK, "/reload", "/config get gateway.admins"):
                resp = say(http, text, sender_id=sender)
                reply = resp.json()["reply"]
                assert resp.status_code == 200 and "admin" in reply, reply
                assert "gateway.admins" in reply and "clawctl" in reply, reply
        refused = say(http, "/reload", sender_id="bob").json()["reply"]
        assert """clawctl config set gateway.admins '["api:bob"]'""" in refused
        assert claw_home.config_file.read_bytes() == before
        assert "(admin)" in say(http, "/help").json()["reply"]  # the list says which are

        changed = say(http, "/config set agents.defaults.temperature 0.5", sender_id="alice")
        assert "Applied by 1 process(es)" in changed.json()["reply"], changed.text
        assert (
            say(http, "/config get agents.defaults.temperature", sender_id="alice").json()["reply"]
            == "0.5"
        )
        # A run of another session (its message id reads the message) is an admin's to see.
        queued = http.post("/api/message", json={"text": "private", "session": "api:other"})
        run_id, message_id = queued.json()["run_id"], queued.json()["message_id"]
        for text in (f"/status run {run_id}", f"/status wait {run_id} 1"):
            reply = say(http, text, sender_id="bob").json()["reply"]
            assert reply.startswith(f"No run {run_id}") and message_id not in reply, reply
            reply = say(http, text, sender_id="alice").json()["reply"]
            assert f"{run_id}: queued" in reply and message_id in reply, reply
        # An admin's bad value is an answer, not a 500.
        for value in ("9" * 5000, "[" * 90_000):  # under quotas.max_message_chars
            resp = say(http, f"/config set agents.defaults.temperature {value}", sender_id="alice")
            assert resp.status_code == 200 and resp.json()["reply"].startswith("Not changed")
    assert json.loads(claw_home.config_file.read_text())["agents"]["defaults"]["temperature"] == 0.5
    assert not tracebacks(fleet)


def test_without_a_token_no_api_caller_is_an_admin(fleet_factory, claw_home):
    # The sender_id is the caller's own claim: without a token anyone can say "alice".
    fleet = fleet_factory(gateway__admins=["api:alice"])
    fleet.start_ingress()
    before = claw_home.config_file.read_bytes()
    with fleet.client() as http:
        reply = say(http, ATTACK, sender_id="alice").json()["reply"]
        assert "gateway.token" in reply and "admin" in reply, reply
        assert say(http, "/status").json()["reply"].startswith("session api:hard")  # not admin
    assert claw_home.config_file.read_bytes() == before


# -- bodies that break parsers -------------------------------------------------------------


def test_deep_json_and_huge_numbers_get_422_without_a_traceback(fleet_factory):
    fleet = fleet_factory()
    fleet.start_ingress()
    with fleet.client() as http:

        def post(raw: str | bytes) -> httpx.Response:
            return http.post("/api/message", content=raw, headers={"Content-Type": "application/json"})  # fmt: skip

        resp = post("[" * 100_000)
        assert resp.status_code == 422 and "nested" in resp.json()["error"], resp.text
        resp = post('{"text": "hi", "x": ' + "[" * 65 + "]" * 65 + "}")
        assert resp.status_code == 422 and "nested" in resp.json()["error"]
        resp = post('{"text": "' + "[" * 100_000 + '"}')  # brackets inside a string are text
        assert resp.status_code == 202, resp.text
        resp = post('{"text": "hi", "timeout": ' + "9" * 5000 + "}")
        assert resp.status_code == 422 and "digits" in resp.json()["error"], resp.text
        resp = post('{"text": "hi", "timeout": 0.' + "1" * 5000 + "}")
        assert resp.status_code == 422 and "digits" in resp.json()["error"]
        for bad in ("NaN", "Infinity", "1e999"):
            resp = post('{"text": "hi", "timeout": ' + bad + "}")
            assert resp.status_code == 422, (bad, resp.text)
        resp = post('{"text": "hi", "timeout": 12.5}')
        assert resp.status_code == 202
        resp = post('"\\' * 50_000)  # an unfinished string of escapes: linear, not quadratic
        assert resp.status_code == 422
        resp = post("\ufeff".encode("utf-16") + b"{}")
        assert resp.status_code == 422 and "UTF-8" in resp.json()["error"]
        assert http.get("/health").status_code == 200
    assert not tracebacks(fleet)


# -- slow and flooding clients -------------------------------------------------------------
# Each against both HTTP parsers: the guard (claw_ingress/connections.py) is one mixin over
# uvicorn's httptools protocol (the default) and its h11 one (claw-ingress --http h11).


@pytest.fixture(params=["httptools", "h11"])
def http(request: pytest.FixtureRequest) -> list[str]:
    return ["--http", str(request.param)]


def raw_socket(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    sock.setblocking(False)
    return sock


class Clients:
    """Raw sockets read without blocking: what the server sent on each, and which it closed."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.got = {s: b"" for s in socks}
        self.open = set(socks)
        self._sel = selectors.DefaultSelector()
        for sock in socks:
            self._sel.register(sock, selectors.EVENT_READ)

    def pump(self, until: Any, deadline: float) -> bool:
        """Read until ``until(self)`` holds (True) or ``deadline`` passes (False)."""
        while not until(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in self._sel.select(timeout=min(left, 0.1)):
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                self.got[sock] += chunk
                if not chunk:
                    self._sel.unregister(sock)
                    self.open.discard(sock)
        return True

    def close(self) -> None:
        self._sel.close()
        for sock in self.got:
            sock.close()


def read_until_closed(socks: list[socket.socket], deadline: float) -> dict[socket.socket, bytes]:
    """What the server sent on each socket until it closed it; fails at ``deadline``."""
    clients = Clients(socks)
    closed = clients.pump(lambda c: not c.open, deadline)
    clients.close()
    assert closed, f"{len(clients.open)} stalled connection(s) still open at the deadline"
    return clients.got


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_a_slow_flood_is_cut_off_and_never_keeps_health_from_answering(fleet_factory, http):
    fleet = fleet_factory(
        gateway__max_connections=20, gateway__header_timeout_sec=1, gateway__body_timeout_sec=1
    )
    proc = fleet.start_ingress(*http)
    baseline = open_fds(proc.pid)
    head = b"POST /api/message HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    partial_body = head + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"te'
    started = time.monotonic()
    flood = Clients([raw_socket(fleet.port, head if n % 2 else partial_body) for n in range(200)])
    try:
        # Beyond the cap, each new connection takes the place of the slowest one (a 503)...
        answered = lambda c: sum(s not in c.open or bool(c.got[s]) for s in c.got)  # noqa: E731
        assert flood.pump(lambda c: answered(c) >= 170, deadline=started + 3), answered(flood)
        # ...so /health answers during the flood, not after it,
        health = httpx.get(f"{fleet.base_url}/health", timeout=2)
        assert health.status_code == 200 and time.monotonic() - started < 1, health
        # and, once it has sorted out what it accepted in one go, the process holds the
        # capped connections, not one socket per client.
        wait_for(lambda: open_fds(proc.pid) <= baseline + 20 + 5, timeout=0.8, interval=0.01,
                 what="descriptors bounded by the cap")  # fmt: skip
        # The stalled ones left are cut off by the header and body deadlines.
        all_closed = flood.pump(lambda c: not c.open, deadline=started + 1 + 1 + 4)
        assert all_closed, f"{len(flood.open)} stalled connection(s) still open"
        statuses = [status_of(r) for r in flood.got.values()]
    finally:
        flood.close()
    # 503 for those dropped for newer ones, 408 for the last ones stalled (None: a reset).
    counts = {code: statuses.count(code) for code in set(statuses)}
    assert set(counts) <= {503, 408, None}, counts
    assert counts.get(408, 0) >= 10 and counts.get(503, 0) >= 150, counts
    dropped = next(r for r in flood.got.values() if status_of(r) == 503)
    assert b"gateway.max_connections is 20" in dropped, dropped

    # A client that goes away mid-body is one log line, not a traceback.
    for _ in range(5):
        raw_socket(fleet.port, partial_body).close()
    wait_for(lambda: sum(e.get("event") == "client disconnected" for e in log_events(fleet)) >= 5,
             timeout=10, what="five disconnect lines")  # fmt: skip
    assert not tracebacks(fleet)


def test_when_every_connection_is_busy_a_new_one_gets_a_clear_503(fleet_factory, http):
    fleet = fleet_factory(gateway__max_connections=3)
    fleet.start_ingress(*http)  # no worker: each request below waits for its reply
    body = json.dumps({"text": "hi", "session": "api:busy", "wait": True, "timeout": 3600})
    request = (
        b"POST /api/message HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    busy = [raw_socket(fleet.port, request) for _ in range(3)]
    r = redis.Redis.from_url(fleet.redis.url)
    try:
        wait_for(lambda: r.llen(k.mailbox_key("api:busy")) == 3, timeout=10, what="3 waiting")
    finally:
        r.close()
    resp = httpx.get(f"{fleet.base_url}/health", timeout=5)
    assert resp.status_code == 503 and "gateway.max_connections is 3" in resp.json()["error"]
    assert resp.headers["retry-after"] == "1"
    for sock in busy:  # the callers give up: their waits end, their slots free up
        sock.close()
    wait_for(lambda: httpx.get(f"{fleet.base_url}/health", timeout=2).status_code == 200,
             timeout=5, what="/health once the busy callers left")  # fmt: skip
    assert not tracebacks(fleet)


def test_a_slow_body_gets_408_and_a_slow_header_is_closed(fleet_factory, http):
    fleet = fleet_factory(gateway__header_timeout_sec=1, gateway__body_timeout_sec=1.5)
    fleet.start_ingress(*http)
    started = time.monotonic()
    body = raw_socket(fleet.port, b"POST /api/message HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
    header = raw_socket(fleet.port, b"GET /health HTTP/1.1\r\nHost: loc")
    silent = raw_socket(fleet.port, b"")
    got = read_until_closed([body, header, silent], deadline=started + 1.5 + 3)
    for sock in (body, header, silent):
        sock.close()
    assert status_of(got[body]) == 408 and b"1.5" in got[body], got[body]
    assert status_of(got[header]) == 408 and b"header" in got[header], got[header]
    assert got[silent] == b""  # nothing asked, nothing answered: just closed
    assert not tracebacks(fleet)


@pytest.mark.parametrize("path", ["/api/message", "/api/sessions/api:x/stop"])
def test_a_trickled_body_after_an_early_answer_is_cut_off(fleet_factory, path, http):
    """The app may answer before the body is in (a 413 on Content-Length): a client that
    then trickles the body a byte at a time must not keep the connection for ever."""
    fleet = fleet_factory(gateway__body_timeout_sec=1)
    fleet.start_ingress(*http)
    sock = raw_socket(fleet.port, f"POST {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
                      + b"Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n")  # fmt: skip
    deadline = time.monotonic() + 1 + 4
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            sock.send(b" ")
            closed = sock.recv(65536) == b""
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        time.sleep(0.1)
    sock.close()
    assert closed, "the server kept a trickling connection past the body timeout"


def test_an_oversized_request_head_is_refused(fleet_factory, http):
    """A request head (request line and headers) still incomplete past 16 KiB is refused and
    closed, long before the header deadline: h11's own bound, which the httptools protocol
    applies itself, to complete heads too (h11 takes a complete one that came in one read)."""
    fleet = fleet_factory()
    fleet.start_ingress(*http)
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
    whole = raw_socket(fleet.port, head + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
    trickled = raw_socket(fleet.port, head)
    started = time.monotonic()
    for _ in range(24):  # 24 KiB of header lines, none ending the head
        try:
            trickled.send(b"X-More: " + b"b" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.02)
    got = read_until_closed([trickled], deadline=started + 5)[trickled]
    assert status_of(got) in (431, 400), got  # h11: its generic 400
    if http[-1] == "httptools":
        whole_got = read_until_closed([whole], deadline=started + 5)[whole]
        assert status_of(whole_got) == 431 and b"16384" in whole_got, whole_got
    # A 12 KiB head that comes in pieces (one header line split between reads) is served.
    split = raw_socket(fleet.port, head + b"X-Big: " + b"c" * 6000)
    for piece in (b"c" * 6000, b"\r\nConnection: close\r\n\r\n"):
        time.sleep(0.1)
        split.send(piece)
    served = read_until_closed([split], deadline=time.monotonic() + 5)[split]
    assert status_of(served) == 200, served
    for sock in (whole, trickled, split):
        sock.close()
    assert httpx.get(f"{fleet.base_url}/health", timeout=5).status_code == 200
    assert not tracebacks(fleet)


def test_a_websocket_outlives_the_request_deadlines(fleet_factory, http):
    """The guard lets go of a connection upgraded to a WebSocket: no header or body deadline
    closes it afterwards."""
    from websockets.sync.client import connect

    fleet = fleet_factory(gateway__header_timeout_sec=1, gateway__body_timeout_sec=1)
    fleet.start_ingress(*http)
    with connect(f"ws://127.0.0.1:{fleet.port}/ws") as ws:
        time.sleep(1 + 0.5 + 1)  # past both deadlines (and the body's slack)
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
    assert not tracebacks(fleet)


def test_a_waiting_client_that_leaves_frees_its_wait(fleet_factory):
    fleet = fleet_factory()
    fleet.start_ingress()  # no worker: the message waits in its mailbox, the caller for it
    body = json.dumps({"text": "hi", "session": "api:gone", "wait": True, "timeout": 3600})
    sock = raw_socket(fleet.port, b"POST /api/message HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
    r = redis.Redis.from_url(fleet.redis.url)
    try:
        wait_for(lambda: r.llen(k.mailbox_key("api:gone")), timeout=10, what="message stored")
    finally:
        r.close()
    sock.close()
    wait_for(
        lambda: any(e.get("during") == "wait for reply" for e in log_events(fleet)),
        timeout=5, what="the ingress to give up the wait",
    )  # fmt: skip
    assert not tracebacks(fleet)
