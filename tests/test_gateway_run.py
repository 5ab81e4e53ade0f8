"""``clawctl gateway run`` on the embedded Redis: serves a message end to end, restarts a
child that dies, and leaves no process behind after SIGINT, not even an embedded Redis
another process restarted; a second SIGINT stops it at once; commands run beside it (a
second ``gateway run``, ``uninstall --purge``) say it is there instead of breaking it."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import redis

from tests.fixtures.claw_home import ClawHome
from tests.fixtures.llm import LLMServer
from tests.fixtures.procs import free_port, pid_alive, stop_process, wait_for
from tests.fixtures.systemd import SystemdStandIn
from tests.test_embedded_redis import ASK


def child_pids(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+pid (\d+)", output, re.M)}


def start_fleet(
    home: ClawHome, llm: LLMServer, port: int, *, concurrency: int = 2
) -> tuple[subprocess.Popen, Path]:
    """``clawctl gateway run`` on ``home``, answering on ``port``, once /health answers."""
    home.write_config(
        {
            "providers": {"proxy": {"api_base": llm.base_url, "models": ["m1"]}},
            "gateway": {"port": port},
            "worker": {"concurrency": concurrency},
        }
    )
    out_path = home.path / "gateway.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "claw_worker.cli", "gateway", "run"],
            env=home.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200,
                 timeout=90, what="gateway /health")  # fmt: skip
    except BaseException:
        stop_process(proc)
        raise
    return proc, out_path


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def serving_pid(home: ClawHome) -> int:
    client = redis.Redis.from_url(f"unix://{home.path}/run/redis.sock", socket_timeout=2)
    return int(client.info("server")["process_id"])


def test_gateway_run_serves_restarts_and_stops_cleanly(claw_home: ClawHome, llm_server) -> None:
    port = free_port()
    proc, out_path = start_fleet(claw_home, llm_server, port, concurrency=8)
    output = lambda: out_path.read_text(errors="replace")  # noqa: E731
    pids: dict[str, int] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        text = output()
        assert "redis" in text and "embedded" in text and "log:" in text
        pids = child_pids(text)
        assert {"ingress", "worker", "beat"} <= set(pids)
        # The children's output holds message previews: private, like the *.log files.
        for out in (claw_home.path / "logs").glob("*.out"):
            assert stat.S_IMODE(out.stat().st_mode) == 0o600, out
        redis_pid = int((claw_home.path / "run" / "redis.pid").read_text())

        resp = httpx.post(f"{base}/api/message", json={"text": "hi", "wait": True}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["reply"] == "echo: hi"

        # A worker that dies is restarted, and the fleet keeps answering.
        os.kill(pids["worker"], signal.SIGKILL)
        restarted = wait_for(
            lambda: re.findall(r"^worker\s+pid (\d+)\s+restarted", output(), re.M),
            timeout=30, what="the worker to be restarted",
        )  # fmt: skip
        pids["worker2"] = int(restarted[-1])
        resp = httpx.post(f"{base}/api/message", json={"text": "again", "wait": True}, timeout=90)
        assert resp.json()["reply"] == "echo: again"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, output()
        assert "stopped" in output()
        for name, pid in [*pids.items(), ("redis", redis_pid)]:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=10, what=f"{name} to exit")
        assert not (claw_home.path / "run" / "redis.sock").exists()
        # The embedded Redis kept its data on disk (append-only file).
        assert any((claw_home.path / "data").rglob("*.aof*"))
    finally:
        stop_process(proc)
        for pid in pids.values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_embedded_redis_is_stopped_whoever_restarted_it(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    proc, out_path = start_fleet(claw_home, llm_server, free_port())
    pids = list(child_pids(out_path.read_text()).values())
    try:
        first = serving_pid(claw_home)
        pids.append(first)
        os.kill(first, signal.SIGKILL)
        # Another process of the fleet asks for Redis at once and starts a detached one
        # (or finds the supervisor's own restart first): either way one serves again.
        subprocess.run([sys.executable, "-c", ASK], env=claw_home.env(), timeout=60, check=True)
        second = wait_for(lambda: serving_pid(claw_home) != first and serving_pid(claw_home),
                          timeout=20, what="a new embedded redis")  # fmt: skip
        pids.append(second)
        # The supervisor saw it (at its next look): restarted by itself, or by the other
        # process first.
        wait_for(lambda: re.search(r"^redis\s+pid \d+\s+restarted", out_path.read_text(), re.M),
                 timeout=30, what="the supervisor to see the new redis")  # fmt: skip
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, out_path.read_text()
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=15, what=f"pid {pid} to exit")
        found = subprocess.run(["pgrep", "-f", f"{claw_home.path}/run/redis.sock"],
                               capture_output=True, text=True)  # fmt: skip
        assert found.stdout.split() == []
    finally:
        stop_process(proc)
        kill_all(pids)


def test_a_second_ctrl_c_stops_the_fleet_at_once(
    claw_home: ClawHome, llm_server: LLMServer
) -> None:
    port = free_port()
    proc, out_path = start_fleet(claw_home, llm_server, port)
    pids = list(child_pids(out_path.read_text()).values())
    try:
        llm_server.reply("late", when="slow", delay=30)
        resp = httpx.post(f"http://127.0.0.1:{port}/api/message", json={"text": "slow"})
        assert resp.status_code in (200, 202), resp.text
        wait_for(lambda: llm_server.requests, timeout=30, what="the run to reach the model")

        proc.send_signal(signal.SIGINT)  # the worker waits for the run in progress
        wait_for(lambda: "Ctrl-C again to force" in out_path.read_text(), timeout=10,
                 what="the stop to say what it waits for")  # fmt: skip
        assert re.search(r"waiting up to \d+ s for worker", out_path.read_text())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, out_path.read_text()
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=5, what=f"pid {pid} to exit")
        assert "forced" in out_path.read_text()
    finally:
        stop_process(proc)
        kill_all(pids)


def test_commands_beside_a_running_fleet_name_it(
    claw_home: ClawHome, llm_server: LLMServer, tmp_path: Path
) -> None:
    port = free_port()
    proc, out_path = start_fleet(claw_home, llm_server, port)
    pids = list(child_pids(out_path.read_text()).values())
    try:
        # Purging the home under the fleet is refused, and changes nothing.
        sd = SystemdStandIn(tmp_path / "sd", claw_home).install()
        purge = sd.clawctl("uninstall", "--purge", "--yes")
        assert purge.returncode == 1, purge.stdout
        assert f"`clawctl gateway run` (pid {proc.pid}) is running on this CLAW_HOME" in (
            purge.stderr
        )
        assert "removed" not in purge.stdout and (claw_home.path / "config.json").exists()
        # A second fleet on the same home.
        again = claw_home.clawctl("gateway", "run")
        assert again.returncode == 1
        assert f"another `clawctl gateway run` (pid {proc.pid}) is already running" in again.stderr
        assert f"kill -INT {proc.pid}" in again.stderr and "stopping" not in again.stdout
        # A fleet on another home, with the same port: the port's holder is named.
        other = ClawHome(tmp_path / "o")
        other.path.mkdir()
        other.write_config({"gateway": {"port": port}})
        taken = other.clawctl("gateway", "run")
        assert taken.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use by a clawfleet ingress (pid " in (
            taken.stderr
        )
        assert f"CLAW_HOME {claw_home.path}" in taken.stderr and "another program" not in (
            taken.stderr
        )
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert proc.poll() is None
    finally:
        stop_process(proc)
        kill_all(pids)
