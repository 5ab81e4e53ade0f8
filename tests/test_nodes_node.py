"""``claw-node`` itself, over its HTTP API and through the gateway's relay WebSocket: its
own token on every request, ``run`` guarded like ``exec`` (deny patterns, a deadline, an
output cap, nothing left running), ``invoke``'s functions, ``unsupported_action`` for what
the device lacks, bad requests, and the options and registrations it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fixtures.procs import free_port, pid_alive, wait_for
from tests.test_nodes import CLAW_NODE, GATEWAY_TOKEN, node_output, node_token, start_node


@pytest.fixture
def desk(fleet_factory: Any) -> Any:
    """A gateway and one p2p node with a short run deadline and a small output cap."""
    fleet = fleet_factory(gateway__token=GATEWAY_TOKEN)
    fleet.start_ingress()
    port = free_port()
    start_node(fleet, "desk", "--listen", f"127.0.0.1:{port}", "--run-timeout", "2",
               "--max-output", "100", "--deny", r"\bcurl\b")  # fmt: skip
    fleet.node_url = f"http://127.0.0.1:{port}"
    return fleet


def call(fleet: Any, path: str, body: Any, token: str | None = None) -> httpx.Response:
    token = node_token("desk") if token is None else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(fleet.node_url + path, json=body, headers=headers, timeout=30)


def act(fleet: Any, action: str, path: str, **args: Any) -> dict[str, Any]:
    answer = call(fleet, path, {"action": action, "args": args, "timeout_ms": 10_000})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_every_request_needs_the_nodes_own_token(desk: Any) -> None:
    assert httpx.get(desk.node_url + "/health").json() == {"status": "ok"}
    body = {"action": "run", "args": {"command": "echo hi"}}
    for token in ("", "wrong-token-0123456789", GATEWAY_TOKEN):
        refused = call(desk, "/run", body, token=token)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "unauthorized" and not refused.json()["ok"]
    ran = call(desk, "/run", body).json()
    assert ran["payload"]["text"] == "hi\n", ran
    for bad, status in (
        ({"args": {}}, 400), ({"action": "run", "args": []}, 400),
        ({"action": "RUN!", "args": {}}, 400), ({"action": "run", "timeout_ms": "5"}, 400),
        ({"action": "invoke", "args": {"command": "echo"}}, 404),  # /run is not invoke's route
    ):  # fmt: skip
        answer = call(desk, "/run", bad)
        assert answer.status_code == status and answer.json()["code"] == "bad_request", bad
    assert act(desk, "run", "/run")["code"] == "bad_request"  # no command


def test_run_is_guarded_like_exec(desk: Any) -> None:
    denied = act(desk, "run", "/run", command="mkfs.ext4 /dev/sda")
    assert denied["code"] == "denied" and "mkfs" in denied["error"]
    assert act(desk, "run", "/run", command="curl http://example.com")["code"] == "denied"
    started = act(desk, "run", "/run", command="sleep 60 & echo $!")
    assert started["ok"], started
    pid = int(started["payload"]["text"])
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the background sleep to be killed")
    slow = act(desk, "run", "/run", command="echo begun; sleep 30")
    assert slow["code"] == "timeout" and "after 2s" in slow["error"], slow
    assert slow["payload"]["text"] == "begun\n" and slow["payload"]["meta"]["exit_code"] is None
    long = act(desk, "run", "/run", command="yes | head -c 100000")
    assert long["ok"] and long["payload"]["meta"]["truncated"] is True
    assert len(long["payload"]["text"]) == 100
    failed = act(desk, "run", "/run", command="exit 3")
    assert failed["ok"] and failed["payload"]["meta"]["exit_code"] == 3


def test_invoke_and_what_the_device_lacks(desk: Any) -> None:
    echoed = act(desk, "invoke", "/invoke", command="echo", colour="blue")
    assert echoed["payload"]["data"] == {"colour": "blue"}, echoed
    assert act(desk, "invoke", "/invoke", command="info")["payload"]["data"]["id"] == "desk"
    assert "epoch" in act(desk, "invoke", "/invoke", command="time")["payload"]["data"]
    missing = act(desk, "invoke", "/invoke", command="reboot")
    assert missing["code"] == "unsupported_action" and "echo, info, time" in missing["error"]
    for action, path in (("camera_snap", "/camera/snap"), ("screen_record", "/screen/record"),
                         ("location_get", "/location/get"), ("agent_task", "/invoke"),
                         ("canvas_present", "/canvas/present")):  # fmt: skip
        answer = act(desk, action, path)
        assert answer["code"] == "unsupported_action" and not answer["ok"], (action, answer)


def test_the_relay_takes_only_registered_nodes_with_their_tokens(desk: Any) -> None:
    url = desk.base_url.replace("http", "ws") + "/nodes/connect"

    def refusal(headers: dict[str, str]) -> str:
        with (
            connect(url, additional_headers=headers, open_timeout=10) as ws,
            pytest.raises(ConnectionClosed) as closed,
        ):
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        return closed.value.rcvd.reason

    own = {"X-Node-Id": "desk", "X-Node-Token": node_token("desk")}
    assert "token" in refusal(own)  # no gateway token
    gateway = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
    assert "X-Node-Token" in refusal({**gateway, **own, "X-Node-Token": "x" * 20})
    assert "register first" in refusal({**gateway, "X-Node-Id": "ghost", "X-Node-Token": "x"})
    assert "X-Node-Id" in refusal({**gateway, "X-Node-Id": "../../etc"})


def test_a_node_registering_with_a_new_token_ends_the_old_relay_connection(desk: Any) -> None:
    """A node registering again with a new token (the old one leaked, or its id was taken
    over) left the connection made with the old token open: requests for the node still
    went down it, each carrying the new token."""
    gateway = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
    old, new = "old-token-0123456789abcdef", "new-token-0123456789abcdef"

    def register(token: str) -> None:
        answer = httpx.post(desk.base_url + "/nodes/register", headers=gateway, timeout=10,
                            json={"id": "phone", "token": token, "ttl_sec": 120})  # fmt: skip
        assert answer.status_code == 200, answer.text

    register(old)
    url = desk.base_url.replace("http", "ws") + "/nodes/connect"
    headers = {**gateway, "X-Node-Id": "phone", "X-Node-Token": old}
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
        register(new)
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # the gateway's renewal, every 10 s, finds the token changed
                frame = json.loads(ws.recv(timeout=30))
                assert new not in json.dumps(frame), frame
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "token" in closed.value.rcvd.reason
    with connect(url, additional_headers={**headers, "X-Node-Token": new}, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


def test_options_and_registrations_it_refuses(desk: Any) -> None:
    def node(*args: str, token: str = GATEWAY_TOKEN) -> subprocess.CompletedProcess[str]:
        env = desk.home.env(CLAW_GATEWAY_TOKEN=token)
        return subprocess.run([CLAW_NODE, "--gateway", desk.base_url, *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    for args, problem in (
        (["--id", "x"], "give --listen HOST:PORT (p2p), --relay, or both"),
        (["--id", "a b", "--relay"], "--id must be"),
        (["--id", "x", "--listen", "nowhere"], "--listen must be HOST:PORT"),
        (["--id", "x", "--relay", "--location", "north"], "the location must be LAT,LON"),
        (["--id", "x", "--relay", "--deny", "("], "is not a regular expression"),
        (["--id", "x", "--relay", "--model-base", "http://m/v1"], "--model-base needs --model"),
        (["--id", "x", "--relay", "--capabilities", "Camera!"], "--capabilities is a"),
        (["--id", "x", "--relay", "--ttl", "1"], "--ttl must be between 2 and 86400"),
    ):  # fmt: skip
        result = node(*args)
        assert result.returncode == 2 and problem in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    # The synopsis says that one of --listen and --relay is needed.
    usage = node("--help").stdout.splitlines()[0]
    assert (
        usage
        == "usage: claw-node --gateway URL --id ID (--listen HOST:PORT | --relay | both) [options]"
    )
    wrong = node("--id", "x", "--relay", token="not-the-gateway-token")
    assert wrong.returncode == 2 and "HTTP 401" in wrong.stderr, wrong.stderr
    too_long = node("--id", "x", "--relay", "--ttl", "86400")
    assert too_long.returncode == 2 and "nodes.max_ttl_sec" in too_long.stderr
    assert node_token("desk") not in node_output(desk, "desk") + json.dumps(too_long.stderr)


def test_the_node_agent_stays_light() -> None:
    """Of the project, claw-node loads the wire, the config schema (exec's deny patterns)
    and nothing of the workers: no agent, tools, Redis or Celery."""
    code = ("import sys, claw_node.__main__; print(' '.join(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('claw_worker', 'claw_ingress', 'redis', 'celery', 'kombu'))))")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()  # fmt: skip
    assert {m for m in loaded if not m.startswith("claw_worker.config")} == {
        "claw_worker", "claw_worker.fsutil", "claw_worker.nodes", "claw_worker.nodes.envelope",
    }, loaded  # fmt: skip
