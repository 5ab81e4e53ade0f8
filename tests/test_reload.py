"""Config changes reach every running process on every host, or none.

Two hosts (own config files, shared Redis): ``clawctl config set`` on host A is applied by
A's ingress and worker and B's worker, written into B's file, and takes effect in the next
message without a restart; a value one process rejects is applied nowhere and A's file is
restored from its backup; ``clawctl config reload`` and ``/reload`` make every host take the
file they were run on (written into the others' files, so no host keeps a config of its
own); a read-only config file (as compose mounts it) gets a clear answer, never a 500.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.claw_home import ClawHome
from tests.fixtures.hosts import Host
from tests.fixtures.procs import free_port, stop_process, wait_for

# /reload and /config set over the API are for admins: a listed sender_id with the token.
TOKEN = "reload-token-abcdefgh"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def host_config(llm_url: str, **tools: Any) -> dict[str, Any]:
    return {
        "providers": {"proxy": {"api_base": llm_url, "api_key": "sk-x-123456789", "models": ["m"]}},
        # One admin sender asks every message: a burst above the tests' count of them.
        "gateway": {
            "port": free_port(),
            "token": TOKEN,
            "admins": ["api:ops"],
            "rate_limit": {"per_sender_burst": 100},
        },
        "worker": {"concurrency": 8, "lease_sec": 3, "sweep_interval_sec": 1},
        "tools": {"exec": {"enabled": False}},
    }


def clawctl(
    host: Host, *args: str, wrap: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*(wrap or []), sys.executable, "-m", "claw_worker.cli", *args],
        env=host.env("worker", **env),
        cwd=host.home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def tool_names(request: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or []}


def ask(base: str, text: str, session: str) -> dict[str, Any]:
    resp = httpx.post(f"{base}/api/message", timeout=60, headers=ADMIN,
                      json={"text": text, "session": session, "wait": True, "sender_id": "ops"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()


def start(host: Host, llm_url: str, *services: str) -> None:
    host.write_config(host_config(llm_url))
    for service in services:
        host.start(service)
    if "worker" in services:
        host.wait_worker_ready()
    if "ingress" in services:
        port = host.read_config()["gateway"]["port"]
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200,
                 timeout=60, what="ingress")  # fmt: skip


def registered(redis_server: Any, count: int) -> None:
    from claw_worker.control import live_processes

    client = redis_server.client()
    wait_for(lambda: len(live_processes(client)) >= count, timeout=30,
             what=f"{count} processes in the registry")  # fmt: skip


def two_hosts(make_host: Any, redis_server: Any, llm_url: str) -> tuple[Host, Host]:
    """Host A running an ingress and a worker, host B a worker, all three registered."""
    a, b = make_host("a"), make_host("b")
    start(a, llm_url, "ingress", "worker")
    start(b, llm_url, "worker")
    registered(redis_server, 3)
    return a, b


def test_set_reaches_both_hosts_takes_effect_and_a_rejection_rolls_back(
    make_host, redis_server, llm_server
) -> None:
    a, b = two_hosts(make_host, redis_server, llm_server.base_url)
    status = clawctl(a, "status").stdout
    assert "processes  3: ingress ingress-" in status and status.count("worker worker-") == 2
    base = f"http://127.0.0.1:{a.read_config()['gateway']['port']}"
    assert ask(base, "before", "api:r1")["reply"] == "echo: before"
    assert "exec" not in tool_names(llm_server.requests[-1])

    # 1. Applied everywhere, persisted on B, in effect at the next message: no restart. Two
    # settings in one command go together.
    out = clawctl(a, "config", "set", "tools.exec.enabled", "true",
                  "agents.defaults.temperature", "0.25")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Applied by 3 process(es)" in out.stdout, out.stdout
    assert out.stdout.count("worker worker-") == 2 and "ingress ingress-" in out.stdout
    assert b.read_config()["tools"]["exec"]["enabled"] is True
    assert b.read_config()["agents"]["defaults"]["temperature"] == 0.25
    for n in range(4):  # whichever host's worker takes it
        ask(base, f"after {n}", f"api:r2-{n}")
        assert "exec" in tool_names(llm_server.requests[-1])
        assert llm_server.requests[-1]["temperature"] == 0.25

    # 2. B cannot create the new log directory: nothing applied anywhere, A's file restored.
    (b.home / "blocked").write_text("a file where B's log directory would go")
    before_a, before_b = a.config_file.read_text(), b.config_file.read_text()
    out = clawctl(a, "config", "set", "logging.dir", "~/blocked/logs")
    assert out.returncode == 1
    assert "Rejected, nothing was applied" in out.stderr
    assert "cannot create the log directory" in out.stderr and f"{b.home}/blocked" in out.stderr
    assert "restored from config.json.bak" in out.stderr
    assert a.config_file.read_text() == before_a and b.config_file.read_text() == before_b
    assert not (a.home / "blocked").exists()  # A never applied it either
    ask(base, "still fine", "api:r3")

    # 3. Files edited by hand on both hosts, then reload on A (CLI and in chat): the whole
    # fleet takes A's file, B's file is written to match it, and says where it differed.
    for host, temperature in ((a, 0.7), (b, 0.4)):
        data = host.read_config()
        data["agents"]["defaults"]["temperature"] = temperature
        host.write_config(data)
    out = clawctl(a, "config", "reload")
    assert out.returncode == 0 and "Applied by 3 process(es)" in out.stdout, out.stderr
    assert out.stdout.count("its config file differed") == 1, out.stdout
    # B's own gateway.port (each host's file was written with a port of its own) too.
    assert (f"(pid {b.procs['worker'].pid}): its config file differed from the reloaded one "
            "at gateway.port, agents.defaults.temperature; written to match it") in out.stdout  # fmt: skip
    assert b.read_config() == a.read_config()
    for n in range(4):  # whichever host's worker takes it
        ask(base, f"reloaded {n}", f"api:r4-{n}")
        assert llm_server.requests[-1]["temperature"] == 0.7
    reply = ask(base, "/reload", "api:r4")["reply"]
    assert reply.startswith("Applied by 3 process(es)") and "differed" not in reply, reply
    # A reload that one process rejects: nothing applied, the file is left for the user.
    edited = a.read_config()
    a.write_config(edited | {"logging": {"dir": "~/blocked/again"}})  # B cannot make it
    out = clawctl(a, "config", "reload")
    assert out.returncode == 1 and "Rejected, nothing was applied" in out.stderr
    assert "fix it and reload again" in out.stderr and "logging" not in b.read_config()
    a.write_config(edited)

    # 4. A process killed with kill -9 is still registered for a few seconds: the reload
    # does not wait for it forever, applies on the others and says who did not answer.
    b.kill("worker")
    out = clawctl(a, "config", "set", "agents.defaults.temperature", "0.4")
    assert out.returncode == 0, out.stderr
    assert "Applied by 2 process(es)" in out.stdout and "no answer from worker-" in out.stdout


def test_reload_with_no_fleet_running_says_so(make_host) -> None:
    host = make_host("a")
    host.write_config(host_config("http://127.0.0.1:9/v1"))
    host.home.mkdir(parents=True)
    # Redis answers, but no process is registered.
    out = clawctl(host, "config", "reload")
    assert out.returncode == 0 and "No running clawfleet process" in out.stdout, out.stderr
    # No Redis at all.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    out = clawctl(host, "config", "reload", CLAW_REDIS_URL=dead)
    assert out.returncode == 1 and f"No running fleet found on {dead}, unix://" in out.stderr
    out = clawctl(host, "config", "set", "agents.defaults.temperature", "0.3", CLAW_REDIS_URL=dead)
    assert out.returncode == 0 and "the change applies when its processes start" in out.stdout
    assert host.read_config()["agents"]["defaults"]["temperature"] == 0.3


def _read_only_wrap(path: str) -> list[str]:
    """Run a command in a mount namespace where ``path`` is mounted read-only, as compose
    mounts ./config.json (root ignores file modes, so a mode would prove nothing)."""
    return [
        "unshare",
        "-m",
        "sh",
        "-c",
        f"mount --bind -o ro '{path}' '{path}' && exec \"$@\"",
        "-",
    ]


def test_a_read_only_config_file_gets_a_clear_answer(make_host, redis_server, llm_server) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to mount the config read-only")
    host = make_host("a")
    host.write_config(host_config(llm_server.base_url))
    host.home.mkdir(parents=True)
    probe = subprocess.run([*_read_only_wrap(str(host.config_file)), "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode()[:200]}")
    before = host.config_file.read_bytes()
    wrap = _read_only_wrap(str(host.config_file))

    out = clawctl(host, "config", "set", "agents.defaults.temperature", "0.3", wrap=wrap)
    assert out.returncode == 1
    assert "cannot be written (it is on a read-only file system)" in out.stderr, out.stderr
    assert "clawctl config reload" in out.stderr
    assert host.config_file.read_bytes() == before
    assert sorted(p.name for p in host.config_file.parent.iterdir()) == ["config.json"]

    # The ingress on that read-only file: /config set answers, /reload still works.
    port = host.read_config()["gateway"]["port"]
    proc = subprocess.Popen(
        [*wrap, sys.executable, "-m", "claw_ingress"], env=host.env("ingress"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    host.procs["ingress-ro"] = proc
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, timeout=60, what="ingress")
    resp = httpx.post(f"{base}/api/message", headers=ADMIN,
                      json={"text": "/config set gateway.token abcdef", "sender_id": "ops"})  # fmt: skip
    assert resp.status_code == 200
    assert resp.json()["reply"].startswith("Not changed: ") and "read-only" in resp.json()["reply"]
    reload = httpx.post(f"{base}/api/message", headers=ADMIN, timeout=30,
                        json={"text": "/reload", "sender_id": "ops"}).json()  # fmt: skip
    assert reload["reply"].startswith("Applied by 1 process(es)"), reload
    assert json.loads(host.config_file.read_text()) == json.loads(before)


def test_a_directory_no_process_can_make_is_refused_everywhere_and_later_sets_apply(
    make_host, redis_server, llm_server
) -> None:
    a, b = two_hosts(make_host, redis_server, llm_server.base_url)
    before = a.config_file.read_text()
    # Root passes any permission check, yet nothing can be made under /proc: refused at
    # set, naming the field, and the file left as it was.
    for field, value in (("logging.dir", "/proc/nope/logs"),
                         ("agents.defaults.workspace", "/proc/foo")):  # fmt: skip
        out = clawctl(a, "config", "set", field, value)
        assert out.returncode == 1 and f"{field}: cannot create" in out.stderr, out.stderr
        assert a.config_file.read_text() == before
    assert clawctl(a, "config", "check").returncode == 0
    # A's file edited by hand: the workers refuse it in the prepare phase, so no process
    # takes the reload, and B's file is left as it was.
    original, b_file = a.read_config(), b.config_file.read_text()
    a.write_config(original | {"agents": {"defaults": {"workspace": "/proc/foo"}}})
    out = clawctl(a, "config", "reload")
    assert out.returncode == 1 and "Rejected, nothing was applied" in out.stderr, out.stderr
    assert "agents.defaults.workspace: cannot create the workspace /proc/foo" in out.stderr
    assert b.config_file.read_text() == b_file
    a.write_config(original)
    # The next change applies everywhere, and in effect.
    out = clawctl(a, "config", "set", "gateway.token", "next-token-12345678")
    assert out.returncode == 0 and "Applied by 3 process(es)" in out.stdout, out.stderr
    base = f"http://127.0.0.1:{a.read_config()['gateway']['port']}"
    resp = httpx.post(f"{base}/api/message", json={"text": "x"},
                      headers={"Authorization": "Bearer next-token-12345678"})  # fmt: skip
    assert resp.status_code == 202, resp.text


@contextlib.contextmanager
def one_box_fleet(claw_home: ClawHome, llm_url: str) -> Iterator[None]:
    """``clawctl gateway run`` in ``claw_home``: a fleet on the embedded Redis, registered."""
    claw_home.write_config({"providers": {"proxy": {"api_base": llm_url, "models": ["m"]}},
                            "gateway": {"port": free_port()}, "worker": {"concurrency": 4}})  # fmt: skip
    with open(claw_home.path / "gateway.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "claw_worker.cli", "gateway", "run"],
                                env=claw_home.env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: "processes  3:" in claw_home.clawctl("status").stdout, timeout=60,
                 what="the fleet registered")  # fmt: skip
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        stop_process(proc)


def test_set_reaches_the_fleet_on_the_redis_it_runs_on(claw_home: ClawHome, llm_server) -> None:
    with one_box_fleet(claw_home, llm_server.base_url):
        # The new Redis is taken at restart: said so, through the Redis the fleet is on.
        dead = f"redis://127.0.0.1:{free_port()}/0"
        out = claw_home.clawctl("config", "set", "redis.url", dead)
        assert out.returncode == 0 and "Applied by 3 process(es)" in out.stdout, out.stdout
        assert out.stdout.count("(restart needed for redis.url)") == 3, out.stdout
        assert "the one the running fleet is on (unix://" in out.stdout
        # ... and later changes still reach it, until it restarts.
        out = claw_home.clawctl("config", "set", "agents.defaults.temperature", "0.3")
        assert out.returncode == 0 and "Applied by 3 process(es)" in out.stdout, out.stdout
        status = claw_home.clawctl("status").stdout
        assert "unreachable" in status and "but the running fleet is on unix://" in status
        assert "processes  3:" in status


def test_set_in_another_config_file_leaves_the_running_fleet(
    claw_home: ClawHome, llm_server
) -> None:
    with one_box_fleet(claw_home, llm_server.base_url):
        before = claw_home.config_file.read_text()
        other = claw_home.path / "other.json"
        out = claw_home.clawctl("--config", str(other), "config", "set",
                                "agents.defaults.model", "x")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert ("Not applied to the running fleet: its processes on this host run on "
                f"{claw_home.config_file}, not {other}.") in out.stdout  # fmt: skip
        assert json.loads(other.read_text()) == {"agents": {"defaults": {"model": "x"}}}
        assert claw_home.config_file.read_text() == before
