"""Config changes meet the processes' environment: what compose and systemd give them
(``CLAW_REDIS_URL``, ``CLAW_GATEWAY_TOKEN``) overrides the file, and clawctl may not have it.

A change to a setting a process's environment overrides is named per process as not applied
(a token rotation that did not happen must not read as done); a clawctl whose config and
shell name no Redis finds the fleet through the URL its processes recorded, or says where it
looked and how to point it at the fleet.
"""

from __future__ import annotations

import os
import stat

import httpx

from tests.fixtures.procs import free_port
from tests.test_reload import clawctl, registered, start

NOT_APPLIED = "{} overridden by {} in this process's environment: not applied"


def test_a_change_the_environment_overrides_is_named_not_applied(
    make_host, redis_server, llm_server
) -> None:
    a = make_host("a")
    start(a, llm_server.base_url)
    env_port = free_port()  # the ingress listens where its environment says, not the file
    a.start("ingress", CLAW_GATEWAY_TOKEN="envtok-12345678", CLAW_GATEWAY_PORT=str(env_port))
    a.start("worker")
    a.wait_worker_ready()
    registered(redis_server, 2)
    base = f"http://127.0.0.1:{env_port}"

    out = clawctl(a, "config", "set", "gateway.token", "newtok-12345678")
    assert out.returncode == 0, out.stderr
    ingress = [line for line in out.stdout.splitlines() if "ingress ingress-" in line]
    not_applied = NOT_APPLIED.format("gateway.token", "CLAW_GATEWAY_TOKEN")
    assert len(ingress) == 1 and ingress[0].endswith(not_applied), out.stdout
    assert "Applied by 1 process(es):\n  worker worker-" in out.stdout, out.stdout
    assert a.read_config()["gateway"]["token"] == "newtok-12345678"  # the file has it
    # ... and so it is: the ingress still takes the environment's token only.
    for token, status in (("envtok-12345678", 202), ("newtok-12345678", 401)):
        resp = httpx.post(f"{base}/api/message", json={"text": "x"},
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert resp.status_code == status, resp.text

    # CLAW_REDIS_URL (compose gives it to every process): overridden in both, no restart
    # would take it either.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    out = clawctl(a, "config", "set", "redis.url", dead)
    assert out.returncode == 0, out.stderr
    assert "Applied by 0 process(es)" in out.stdout, out.stdout
    not_applied = NOT_APPLIED.format("redis.url", "CLAW_REDIS_URL")
    assert out.stdout.count(not_applied) == 2, out.stdout
    assert "restart needed" not in out.stdout
    # A setting no environment overrides still applies everywhere, restart-only ones say so.
    out = clawctl(a, "config", "set", "worker.concurrency", "3", "agents.defaults.temperature",
                  "0.3")  # fmt: skip
    assert out.returncode == 0 and "Applied by 2 process(es)" in out.stdout, out.stdout
    assert "(restart needed for worker.concurrency)" in out.stdout
    assert "overridden" not in out.stdout
    # The file made to agree with the environment: nothing is left not applied (a number
    # from the environment is compared as the number the process took, not as text).
    out = clawctl(a, "config", "set", "gateway.port", str(env_port))
    assert out.returncode == 0, out.stderr
    assert "overridden" not in out.stdout, out.stdout


def test_clawctl_finds_a_fleet_given_its_redis_only_in_its_environment(
    make_host, redis_server, llm_server
) -> None:
    a = make_host("a")
    start(a, llm_server.base_url, "worker")  # no redis.url in the file: compose gives it
    registered(redis_server, 1)
    recorded = a.claw_home / "run" / "redis-url"
    assert recorded.read_text() == redis_server.url
    assert stat.S_IMODE(os.stat(recorded).st_mode) == 0o600  # the URL may hold a password
    assert stat.S_IMODE(os.stat(recorded.parent).st_mode) == 0o700

    # clawctl in a shell without CLAW_REDIS_URL: the file names no Redis (embedded).
    out = clawctl(a, "config", "set", "agents.defaults.temperature", "0.3", CLAW_REDIS_URL="")
    assert out.returncode == 0 and "Applied by 1 process(es)" in out.stdout, out.stdout
    assert f"Reached the fleet on {redis_server.url}, the Redis its processes" in out.stdout
    assert "restart the fleet" not in out.stdout  # a restart would not move it
    out = clawctl(a, "config", "reload", CLAW_REDIS_URL="")
    assert out.returncode == 0 and "Applied by 1 process(es)" in out.stdout, out.stdout

    # Nothing recorded: said plainly where it looked and how to reach the fleet.
    recorded.unlink()
    out = clawctl(a, "config", "set", "agents.defaults.temperature", "0.4", CLAW_REDIS_URL="")
    assert out.returncode == 0, out.stderr
    assert f"No running fleet found on unix://{a.claw_home}/run/redis.sock: " in out.stdout
    assert "run clawctl with the same CLAW_REDIS_URL" in out.stdout, out.stdout
