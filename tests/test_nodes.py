"""Nodes end to end: the real ingress, a real Celery worker, the scripted LLM and real
``claw-node`` processes (the venv's script). Registration behind gateway.token, a node that
stops renewing going offline after its TTL, the ``nodes`` tool called by the agent p2p and
through the relay, auto falling back from an unreachable URL to the relay, unsupported
actions, the audit file, and the figures in ``clawctl status``, ``/status`` and
``clawctl nodes list``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from claw_worker import constants as k
from claw_worker.config import Config
from claw_worker.nodes.dispatch import Request, dispatch
from claw_worker.nodes.registry import get_node
from tests.fixtures.procs import free_port, stop_process, wait_for

GATEWAY_TOKEN = "gw-token-0123456789abcdef"
CLAW_NODE = str(Path(sys.executable).with_name("claw-node"))


def node_token(node_id: str) -> str:
    return f"{node_id}-own-token-0123456789"


def start_node(fleet: Any, node_id: str, *args: str, token: str | None = GATEWAY_TOKEN,
               wait: bool = True) -> subprocess.Popen:  # fmt: skip
    """A ``claw-node`` for ``fleet``'s gateway (tokens through the environment), cleaned up
    with the fleet; waits until it is registered (and connected, with --relay)."""
    env = fleet.home.env(CLAW_NODE_TOKEN=node_token(node_id))
    if token:
        env["CLAW_GATEWAY_TOKEN"] = token
    log = open(fleet.home.path / f"node-{node_id}.out", "ab")  # noqa: SIM115 - lives with it
    proc = subprocess.Popen(
        [CLAW_NODE, "--gateway", fleet.base_url, "--id", node_id, *args],
        env=env, cwd=fleet.home.path, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    fleet.procs.append(proc)
    if wait:
        r = fleet.redis.client()
        wait_for(lambda: proc.poll() is not None or r.hexists(k.NODES, node_id), timeout=30,
                 what=f"node {node_id} to register")  # fmt: skip
        assert proc.poll() is None, node_output(fleet, node_id)
        if "--relay" in args:
            wait_for(lambda: r.exists(k.node_connection_key(node_id)), timeout=30,
                     what=f"node {node_id}'s relay connection")  # fmt: skip
    return proc


def node_output(fleet: Any, node_id: str) -> str:
    return fleet.output(f"node-{node_id}")


def register(http: httpx.Client, **body: Any) -> httpx.Response:
    data = {"id": "n1", "token": "n1-token-0123456789abcdef", "ttl_sec": 30, **body}
    return http.post("/nodes/register", json=data)


def test_register_needs_the_gateway_token_and_a_silent_node_goes_offline_after_its_ttl(
    fleet_factory: Any, claw_home: Any
) -> None:
    fleet = fleet_factory(gateway__token=GATEWAY_TOKEN, nodes__max_ttl_sec=600)
    ingress = fleet.start_ingress()
    with fleet.client() as anonymous, fleet.client(GATEWAY_TOKEN) as http:
        refused = register(anonymous)
        assert refused.status_code == 401, refused.text
        assert anonymous.post("/nodes/heartbeat", json={"id": "n1"}).status_code == 401
        with fleet.client("wrong-token") as wrong:
            assert wrong.post("/nodes/register", json={}).status_code == 401
        done = register(http, url="http://127.0.0.1:9/x", capabilities=["run", "run", "model"])
        assert done.status_code == 200, done.text
        assert done.json() == {"id": "n1", "status": "registered", "ttl_sec": 30}
        record = json.loads(fleet.redis.client().hget(k.NODES, "n1"))
        assert record["capabilities"] == ["run", "model"] and record["registered_at"] > 0
        assert http.post("/nodes/heartbeat", json={"id": "n1", "status": "idle"}).json() == {
            "id": "n1", "status": "renewed",
        }  # fmt: skip
        unknown = http.post("/nodes/heartbeat", json={"id": "ghost"})
        assert unknown.status_code == 404 and "register first" in unknown.json()["error"]
        for bad, field in (
            ({"url": "ftp://10.0.0.1/"}, "url"), ({"url": "http://u:p@h/"}, "url"),
            ({"token": "short"}, "token"), ({"id": "a b"}, "id"), ({"ttl_sec": "30"}, "ttl_sec"),
            ({"capabilities": ["Camera!"]}, "capabilities.0"), ({"extra": 1}, "extra"),
            # URLs urlsplit takes but the workers' HTTP client cannot call.
            ({"url": "http://lamp\x01.lan/"}, "url"), ({"url": "http://xn--a.lan/"}, "url"),
            ({"url": "http://lamp.lan/\x9b2J"}, "url"),  # C1 CSI: `clawctl nodes list` shows it
            ({"token": "é" * 16}, "token"),  # HTTP headers carry ASCII: never sent p2p
        ):  # fmt: skip
            answer = register(http, **bad)
            assert answer.status_code == 422, (bad, answer.text)
            assert field in [d["field"] for d in answer.json()["detail"]], answer.json()
        too_long = register(http, ttl_sec=601)
        assert too_long.status_code == 422
        assert "nodes.max_ttl_sec" in too_long.json()["error"]

    node = start_node(fleet, "lamp", "--relay", "--ttl", "3")
    r = fleet.redis.client()
    assert get_node(r, "lamp").online  # type: ignore[union-attr]
    listed = claw_home.clawctl("nodes", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("lamp "))
    assert " online " in row and "relay" in row and node_token("lamp") not in listed.stdout
    first = r.zscore(k.NODES_SEEN, "lamp")
    renewals: set[float] = set()
    # It renews every ttl/3: still online after several heartbeats.
    wait_for(lambda: renewals.add(r.zscore(k.NODES_SEEN, "lamp")) or len(renewals - {first}) >= 3,
             timeout=15, what="three heartbeats")  # fmt: skip
    assert get_node(r, "lamp").online  # type: ignore[union-attr]

    # The gateway restarts: the node connects again, and the relay carries requests again.
    stop_process(ingress)
    wait_for(lambda: not r.exists(k.node_connection_key("lamp")), what="the relay to close")
    fleet.start_ingress()
    wait_for(lambda: r.exists(k.node_connection_key("lamp")), timeout=30,
             what="the node to connect again")  # fmt: skip
    config = Config.model_validate({"nodes": {"timeout_sec": 10}})
    request = Request(node="lamp", action="invoke", args={"command": "echo", "n": 1},
                      mode="relay")  # fmt: skip
    answer = dispatch(r, config, claw_home.workspace, request)
    assert answer["ok"] and answer["payload"]["data"] == {"n": 1}, answer

    os.killpg(node.pid, signal.SIGKILL)
    node.wait()
    killed_at = time.monotonic()
    assert get_node(r, "lamp").online  # type: ignore[union-attr]  # until its TTL passes
    offline = wait_for(lambda: (n := get_node(r, "lamp")) and not n.online and n, timeout=15,
                       what="the killed node to go offline")  # fmt: skip
    assert offline.seen_ago > 3  # offline only once its TTL passed without a heartbeat
    assert time.monotonic() - killed_at < 3 + 3  # and not much later than that
    assert not offline.relay  # its WebSocket closed with it
    listed = claw_home.clawctl("nodes", "list", "--json")
    [shown] = [n for n in json.loads(listed.stdout) if n["id"] == "lamp"]
    assert shown["id"] == "lamp" and shown["online"] is False and shown["modes"] == []
    assert shown["token"] != node_token("lamp") and node_token("lamp") not in listed.stdout


def ask_agent(http: httpx.Client, llm_server: Any, marker: str, args: dict[str, Any]) -> dict:
    """One chat message whose turn calls the nodes tool with ``args``; the envelope the
    model got back."""
    llm_server.reply_tool_call("nodes", args, when=marker)
    llm_server.reply(f"done {marker}", when=marker)
    answer = http.post("/api/message", json={"text": f"please {marker}", "session": "api:ops",
                                             "wait": True, "timeout": 60})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["reply"] == f"done {marker}", answer.text
    tool_result = llm_server.requests_for(marker)[-1]["messages"][-1]
    assert tool_result["role"] == "tool", tool_result
    return json.loads(tool_result["content"])


def test_the_agent_reaches_nodes_p2p_and_by_relay_with_fallback_audit_and_figures(
    fleet_factory: Any, llm_server: Any, claw_home: Any
) -> None:
    fleet = fleet_factory(gateway__token=GATEWAY_TOKEN, nodes__timeout_sec=15,
                          nodes__connect_timeout_sec=2)  # fmt: skip
    fleet.start_ingress()
    fleet.start_worker()
    desk_port, both_port, closed_port = free_port(), free_port(), free_port()
    start_node(fleet, "desk", "--listen", f"127.0.0.1:{desk_port}", "--location", "48.85,2.35,12")
    start_node(fleet, "phone", "--relay", "--capabilities", "run,invoke,camera,model",
               "--model-base", llm_server.base_url, "--model", "test-model")  # fmt: skip
    start_node(fleet, "both", "--listen", f"127.0.0.1:{both_port}", "--relay",
               "--advertise", f"http://127.0.0.1:{closed_port}")  # fmt: skip
    llm_server.reply("The answer is 42.", when="NODE-TASK")

    with fleet.client(GATEWAY_TOKEN) as http:
        ran = ask_agent(http, llm_server, "[run-p2p]", {"action": "run", "node": "desk",
                        "mode": "p2p", "command": "echo hello-from-$(basename $PWD)"})  # fmt: skip
        assert ran["ok"] and ran["code"] == "ok", ran
        assert ran["payload"]["text"].strip() == f"hello-from-{fleet.home.path.name}"
        assert ran["payload"]["meta"]["exit_code"] == 0
        assert ran["meta"]["mode"] == "p2p" and ran["meta"]["node"] == "desk"

        where = ask_agent(http, llm_server, "[where]", {"action": "location_get", "node": "desk"})
        assert where["payload"]["data"] == {"lat": 48.85, "lon": 2.35, "accuracy_m": 12.0}
        assert where["meta"]["mode"] == "p2p"

        relayed = ask_agent(http, llm_server, "[run-relay]", {"action": "run", "node": "phone",
                            "mode": "relay", "command": "env"})  # fmt: skip
        assert relayed["ok"] and relayed["meta"]["mode"] == "relay", relayed
        # A minimal environment: no token of the gateway or the node reaches the command.
        assert "TOKEN" not in relayed["payload"]["text"] and "PATH=" in relayed["payload"]["text"]

        task = ask_agent(http, llm_server, "[task]", {"action": "agent_task", "node": "phone",
                         "task": "NODE-TASK: what is six times seven?"})  # fmt: skip
        assert task["ok"] and task["payload"]["text"] == "The answer is 42.", task
        assert task["meta"]["mode"] == "relay"  # auto: the phone advertised no URL
        [node_call] = llm_server.requests_for("NODE-TASK")
        assert node_call["model"] == "test-model"

        snap = ask_agent(http, llm_server, "[snap]", {"action": "camera_snap", "node": "phone",
                         "facing": "back"})  # fmt: skip
        assert snap["code"] == "unsupported_action" and not snap["ok"], snap
        assert snap["meta"]["mode"] == "relay"  # the node itself says it has no camera
        screen = ask_agent(http, llm_server, "[screen]", {"action": "screen_record",
                           "node": "desk", "duration_ms": 500})  # fmt: skip
        assert screen["code"] == "unsupported_action" and screen["meta"]["mode"] == "none"
        assert "no screen capability" in screen["error"]

        fell_back = ask_agent(http, llm_server, "[auto]", {"action": "run", "node": "both",
                              "command": "echo via-relay"})  # fmt: skip
        assert fell_back["ok"] and fell_back["payload"]["text"] == "via-relay\n", fell_back
        assert fell_back["meta"]["mode"] == "relay"
        assert fell_back["meta"]["fallback"].startswith(f"p2p: cannot connect to "
                                                        f"http://127.0.0.1:{closed_port}/run")  # fmt: skip
        only_p2p = ask_agent(http, llm_server, "[p2p-only]", {"action": "run", "node": "both",
                             "mode": "p2p", "command": "echo never"})  # fmt: skip
        assert only_p2p["code"] == "transport_error" and only_p2p["meta"]["mode"] == "p2p"

        denied = ask_agent(http, llm_server, "[denied]", {"action": "run", "node": "desk",
                           "command": "shutdown -h now"})  # fmt: skip
        assert denied["code"] == "denied" and "deny pattern" in denied["error"], denied

        status = http.post("/api/message", json={"text": "/status", "session": "api:ops"}).json()
    expected = "9 dispatches (ok 5, fail 4), avg "
    assert f"nodes: {expected}" in status["reply"] and "top action run" in status["reply"]

    lines = (claw_home.workspace / "memory" / "nodes-dispatch-audit.jsonl").read_text()
    audit = [json.loads(line) for line in lines.splitlines()]
    assert [(a["node"], a["action"], a["mode"], a["code"]) for a in audit] == [
        ("desk", "run", "p2p", "ok"), ("desk", "location_get", "p2p", "ok"),
        ("phone", "run", "relay", "ok"), ("phone", "agent_task", "relay", "ok"),
        ("phone", "camera_snap", "relay", "unsupported_action"),
        ("desk", "screen_record", "none", "unsupported_action"),
        ("both", "run", "relay", "ok"), ("both", "run", "p2p", "transport_error"),
        ("desk", "run", "p2p", "denied"),
    ]  # fmt: skip
    assert {tuple(sorted(a)) for a in audit} == {
        ("action", "code", "message_id", "mode", "ms", "node", "ok", "session", "time")
    }
    assert all(a["session"] == "api:ops" and isinstance(a["ms"], int) for a in audit)

    shown = claw_home.clawctl("status")
    line = next(x for x in shown.stdout.splitlines() if x.startswith("nodes "))
    assert line.startswith(f"nodes      3 online of 3; {expected}"), line
    assert line.endswith("top action run"), line
    figures = json.loads(claw_home.clawctl("status", "--json").stdout)["nodes"]
    assert figures["dispatches"]["total"] == 9 and figures["dispatches"]["top_action"] == "run"
    listed = claw_home.clawctl("nodes", "list").stdout
    rows = {line.split()[0]: line for line in listed.splitlines()[1:]}
    assert set(rows) == {"both", "desk", "phone"}
    assert "p2p,relay" in rows["both"] and " relay " in rows["phone"] and " p2p " in rows["desk"]

    # The nodes' own tokens were never written anywhere they should not be.
    everything = lines + listed + fleet.output("ingress") + fleet.output("w1")
    everything += json.dumps(llm_server.requests)
    for node_id in ("desk", "phone", "both"):
        assert node_token(node_id) not in everything + node_output(fleet, node_id)
