"""``clawctl gateway run`` on the embedded Redis: serves a message end to end, restarts a
child that dies, and leaves no process behind after SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx

from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port, pid_alive, stop_process, wait_for


def child_pids(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+pid (\d+)", output, re.M)}


def test_gateway_run_serves_restarts_and_stops_cleanly(claw_home: ClawHome, llm_server) -> None:
    port = free_port()
    claw_home.write_config(
        {
            "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["m1"]}},
            "gateway": {"port": port},
            "worker": {"concurrency": 8},
        }
    )
    out_path = claw_home.path / "gateway.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "claw_worker.cli", "gateway", "run"],
            env=claw_home.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    output = lambda: out_path.read_text(errors="replace")  # noqa: E731
    pids: dict[str, int] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, timeout=60,
                 what="gateway /health")  # fmt: skip
        text = output()
        assert "redis" in text and "embedded" in text and "log:" in text
        pids = child_pids(text)
        assert {"ingress", "worker", "beat"} <= set(pids)
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
