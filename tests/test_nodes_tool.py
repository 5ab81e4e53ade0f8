"""The ``nodes`` tool called directly on a real Redis, the registry written by the ingress's
own register script, and a loopback server speaking the node wire where a node must answer
in ways ``claw-node`` never does (an image, garbage, a 401, silence): argument checks, the
refusals before anything is sent, a relay request nobody answers, no second send after a
p2p timeout, an inline image kept as a file, and the pure parts of the wire."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from claw_ingress.nodes import _REGISTER, RegisterBody
from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.nodes.envelope import check_envelope, route_for
from claw_worker.nodes.registry import get_node
from claw_worker.nodes.stats import describe, summarize
from claw_worker.tools import ToolContext, default_tools
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-an-image").decode()
TOKEN = "node-token-0123456789abcdef"


def register(r: Any, node_id: str, **fields: Any) -> None:
    body = RegisterBody.model_validate({"id": node_id, "token": TOKEN, **fields})
    assert r.eval(_REGISTER, 3, k.NODES, k.NODES_SEEN, k.NODES_STATUS, node_id,
                  json.dumps(body.model_dump()), 100, 86400) == 1  # fmt: skip


@pytest.fixture
def call(redis_server: RedisServer, workspace: Path) -> Any:
    config = Config.model_validate({"nodes": {"timeout_sec": 2, "connect_timeout_sec": 1}})
    tools = default_tools(config)
    ctx = ToolContext(workspace, "s:1", config, redis=redis_server.client(), message_id="m1")

    def run(**args: Any) -> Any:
        result = tools.run("nodes", args, ctx)
        return result if result.startswith("Error:") else json.loads(result)

    return run


class _NodeWire(BaseHTTPRequestHandler):
    """Answers as a node would, or would not: by route."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/camera/snap":
            payload = {"media_type": "image/png", "storage": "inline", "image": PNG, "meta": {}}
            self._send(200, {"ok": True, "code": "ok", "error": None, "payload": payload})
        elif self.path == "/screen/record":
            self._send(200, {"ok": True, "code": "fine", "payload": None})  # ok and code disagree
        elif self.path == "/location/get":
            self._send(401, {"detail": "who are you"})
        elif self.path == "/invoke":  # a redirect httpx cannot even parse (bad punycode)
            self.send_response(302)
            self.send_header("Location", "http://xn--a.example/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:  # /run: answers too late
            time.sleep(3)
            self._send(200, {"ok": True, "code": "ok", "error": None, "payload": None})

    def _send(self, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the slow answer finds its caller gone: expected


@pytest.fixture
def wire() -> Iterator[ThreadingHTTPServer]:
    server = _Quiet(("127.0.0.1", 0), _NodeWire)
    server.daemon_threads = True
    server.calls = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_arguments_are_checked_before_anything_is_sent(call: Any) -> None:
    for args, problem in (
        ({"action": "run"}, "run needs node"),
        ({"action": "run", "node": "desk"}, "run needs command"),
        ({"action": "agent_task", "node": "desk"}, "agent_task needs task"),
        ({"action": "run", "node": "desk", "command": "ls", "facing": "back"},
         "facing goes with action camera_snap"),
        ({"action": "invoke", "node": "d", "command": "echo", "params": {"command": "x"}},
         "give command once"),
        ({"action": "reboot", "node": "d"}, "action: Input should be"),
        ({"action": "run", "node": "d", "command": "ls", "mode": "pigeon"}, "mode: Input"),
        ({"action": "run", "node": "../d", "command": "ls"}, "node: String should match"),
        ({"action": "run", "node": "d", "command": "ls", "timeout_sec": 0}, "timeout_sec"),
        ({"action": "invoke", "node": "d", "command": "echo", "params": {"x": "y" * 70_000}},
         "at most 65536"),
    ):  # fmt: skip
        result = call(**args)
        assert isinstance(result, str) and result.startswith("Error: invalid arguments for "
                                                             "nodes:"), (args, result)  # fmt: skip
        assert problem in result, (args, result)
    no_fleet = default_tools(Config()).run(
        "nodes", {"action": "status"}, ToolContext(Path("/tmp"), "s", Config())
    )
    assert no_fleet == "Error: nodes needs the fleet (no Redis connection in this run)"


def test_refusals_status_describe_and_a_relay_nobody_answers(
    call: Any, redis_server: RedisServer, workspace: Path
) -> None:
    r = redis_server.client()
    assert call(action="status")["nodes"] == []
    register(r, "desk", url="http://127.0.0.1:9", capabilities=["run", "location"], ttl_sec=60)
    register(r, "phone", capabilities=["run", "model"], ttl_sec=60)
    register(r, "old", capabilities=["run"], ttl_sec=5)
    r.zadd(k.NODES_SEEN, {"old": float(r.time()[0]) - 60})  # its last heartbeat, a minute ago
    r.set(k.node_connection_key("phone"), "ingress-ghost@host")  # a replica that never reads

    status = call(action="status")["nodes"]
    assert [(n["id"], n["online"], n["modes"]) for n in status] == [
        ("desk", True, ["p2p"]), ("phone", True, ["relay"]), ("old", False, []),
    ]  # fmt: skip
    [desk] = call(action="describe", node="desk")["nodes"]
    assert desk["actions"] == {"run": True, "invoke": False, "camera_snap": False,
                               "screen_record": False, "location_get": True,
                               "agent_task": False}  # fmt: skip
    assert TOKEN not in json.dumps(call(action="describe"))
    assert call(action="describe", node="nope").startswith("Error: no node 'nope'")

    def outcome(**args: Any) -> tuple[str, str, str]:
        answer = call(**args)
        assert check_envelope({k_: v for k_, v in answer.items()}) is None, answer
        return answer["code"], answer["meta"]["mode"], answer["error"]

    assert outcome(action="run", node="nope", command="ls")[:2] == ("not_found", "none")
    assert outcome(action="run", node="old", command="ls")[:2] == ("offline", "none")
    code, mode, error = outcome(action="agent_task", node="desk", task="hi")
    assert (code, mode) == ("unsupported_action", "none") and "no model capability" in error
    code, mode, error = outcome(action="run", node="phone", command="ls", mode="p2p")
    assert (code, mode) == ("transport_error", "p2p") and "advertised no URL" in error
    code, mode, error = outcome(action="run", node="desk", command="ls", mode="relay")
    assert (code, mode) == ("transport_error", "relay") and "no relay connection" in error

    started = time.monotonic()
    code, mode, error = outcome(action="run", node="phone", command="ls", timeout_sec=1)
    assert (code, mode) == ("timeout", "relay") and 1 <= time.monotonic() - started < 3
    [request] = [json.loads(x) for x in r.lrange(k.node_relay_key("ingress-ghost@host"), 0, -1)]
    assert request["node"] == "phone" and request["path"] == "/run"
    assert request["body"] == {"action": "run", "args": {"command": "ls"}, "timeout_ms": 1000}
    assert "token" not in json.dumps(request)  # the replica attaches it, from the registry
    assert r.exists(k.node_request_key(request["id"])) == 0  # the replica will drop it

    audit = (workspace / "memory" / "nodes-dispatch-audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["code"] for line in audit] == [
        "not_found", "offline", "unsupported_action", "transport_error", "transport_error",
        "timeout",
    ]  # fmt: skip
    assert json.loads(audit[0])["message_id"] == "m1"
    figures = summarize(r.hgetall(k.NODES_STATS))
    assert figures["total"] == 6 and figures["ok"] == 0 and figures["fail"] == 6
    assert figures["top_action"] == "run"


def test_what_a_node_answers_p2p(call: Any, redis_server: RedisServer, workspace: Path,
                                 wire: ThreadingHTTPServer) -> None:  # fmt: skip
    r = redis_server.client()
    url = f"http://127.0.0.1:{wire.server_address[1]}"
    register(r, "cam", url=url, capabilities=["run", "camera", "screen", "location"])
    r.set(k.node_connection_key("cam"), "ingress-ghost@host")  # it has a relay, too

    snap = call(action="camera_snap", node="cam", facing="front")
    assert snap["ok"] and snap["payload"]["storage"] == "path", snap
    assert "image" not in snap["payload"]
    assert (workspace / snap["payload"]["path"]).read_bytes() == base64.b64decode(PNG)
    assert snap["payload"]["path"].startswith("media/nodes/cam-")

    garbage = call(action="screen_record", node="cam", duration_ms=100)
    assert garbage["code"] == "bad_response"
    assert call(action="location_get", node="cam")["code"] == "unauthorized"

    slow = call(action="run", node="cam", command="ls")  # nodes.timeout_sec is 2, it takes 3
    assert slow["code"] == "timeout" and slow["meta"]["mode"] == "p2p", slow
    assert "fallback" not in slow["meta"]  # it may have run: never sent a second time
    assert r.llen(k.node_relay_key("ingress-ghost@host")) == 0
    assert wire.calls == ["/camera/snap", "/screen/record", "/location/get", "/run"]  # type: ignore[attr-defined]


def test_a_node_answering_an_unusable_redirect_is_a_transport_error(
    call: Any, redis_server: RedisServer, workspace: Path, wire: ThreadingHTTPServer
) -> None:
    """A compromised node answering ``302 Location: http://xn--a.example/`` (httpx raises
    an IDNA error, not an HTTPError, building the redirect it will not follow): an envelope
    the model can read, and the dispatch audited like any other."""
    r = redis_server.client()
    url = f"http://127.0.0.1:{wire.server_address[1]}"
    register(r, "odd", url=url, capabilities=["invoke"])
    answer = call(action="invoke", node="odd", command="ping")
    assert isinstance(answer, dict), answer
    assert answer["code"] == "transport_error" and not answer["ok"], answer
    assert answer["meta"]["mode"] == "p2p"
    audit = (workspace / "memory/nodes-dispatch-audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["node"] == "odd"


def test_the_wire() -> None:
    assert [route_for(a) for a in ("run", "camera_snap", "screen_record", "location_get",
                                   "invoke", "agent_task", "canvas_present", "canvas_",
                                   "anything")] == [
        "/run", "/camera/snap", "/screen/record", "/location/get", "/invoke", "/invoke",
        "/canvas/present", "/invoke", "/invoke",
    ]  # fmt: skip
    good = {"ok": False, "code": "timeout", "error": "late", "payload": None}
    assert check_envelope(good) is None
    for bad in ([], {**good, "ok": True}, {**good, "code": "Bad Code"}, {**good, "extra": 1},
                {**good, "payload": {"media_type": "text/plain", "storage": "cloud"}},
                {**good, "error": 5}):  # fmt: skip
        assert check_envelope(bad) is not None, bad
    assert summarize({}) == {"total": 0, "ok": 0, "fail": 0, "avg_ms": None, "top_action": None}
    figures = summarize({"total": "4", "ok": "3", "fail": "1", "ms": "10", "action:run": "2",
                         "action:invoke": "2"})  # fmt: skip
    assert figures == {"total": 4, "ok": 3, "fail": 1, "avg_ms": 2, "top_action": "invoke"}
    assert describe(figures) == "4 dispatches (ok 3, fail 1), avg 2 ms, top action invoke"
    assert describe(summarize({})) == "no dispatches yet"


def test_a_full_registry_makes_room_by_forgetting_an_offline_node(
    redis_server: RedisServer,
) -> None:
    """nodes.max_nodes reached with nodes that went offline (a script registering a fresh id
    at each start, a compromised node flooding ids): new nodes got 409 for a week, with no
    command to clear the registry. The node offline longest is forgotten to make room (it
    registers again when it comes back); while every node is online, the registry is full."""
    r = redis_server.client()
    r.delete(k.NODES, k.NODES_SEEN, k.NODES_STATUS)

    def add(node_id: str, ttl: int) -> int:
        body = RegisterBody.model_validate({"id": node_id, "token": TOKEN, "ttl_sec": ttl})
        return int(r.eval(_REGISTER, 3, k.NODES, k.NODES_SEEN, k.NODES_STATUS, node_id,
                          json.dumps(body.model_dump()), 2, 86400))  # fmt: skip

    assert add("gone", 2) == 1 and add("live", 600) == 1
    assert add("new", 600) == 0  # both online
    assert add("live", 600) == 1  # registering again is always possible
    wait_for(lambda: not get_node(r, "gone").online, timeout=10, what="gone to go offline")  # type: ignore[union-attr]
    assert add("new", 600) == 1
    assert get_node(r, "gone") is None and get_node(r, "live") is not None
    assert r.zscore(k.NODES_SEEN, "gone") is None
    assert add("more", 600) == 0  # live and new are online
