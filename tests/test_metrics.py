"""Prometheus metrics, scraped from a real fleet and parsed with prometheus_client's own
parser: the ingress's ``/metrics`` (behind gateway.token) and each worker's server, found
through ``clawctl status --json``."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.procs import free_port, wait_for

TOKEN = "metrics-token-0123456789"
SESSION = "api:metrics-chat-4242"  # never a label value
SECRET_TEXT = "my key is sk-live-abcdefghijklmnop"


def scrape(url: str, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(url, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def scrape_targets(fleet: Any) -> list[dict[str, Any]]:
    result = fleet.home.clawctl("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["metrics"] or []


def worker_target(fleet: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((t for t in scrape_targets(fleet) if t["process"].startswith("worker ")), None)

    return wait_for(found, timeout=30, interval=0.5, what="the worker's scrape target")


def ask(http: httpx.Client, text: str) -> dict[str, Any]:
    resp = http.post("/api/message", json={"text": text, "session": SESSION, "wait": True,
                                           "timeout": 60})  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_metrics_scraped_and_parsed(fleet_factory, llm_server, claw_home) -> None:
    fleet = fleet_factory(
        gateway__token=TOKEN,
        providers__proxy__models=["test-model", "backup-model"],
        worker__metrics_port=free_port(),
    )
    fleet.start_ingress()
    fleet.start_worker()
    with fleet.client(TOKEN) as http:
        llm_server.reply_tool_call("write_file", {"path": "m.txt", "content": "x"})
        llm_server.reply("wrote it")
        assert ask(http, "write a file")["reply"] == "wrote it"
        llm_server.reply_tool_call("no_such_tool", {})
        llm_server.reply("tried")
        assert ask(http, SECRET_TEXT)["reply"] == "tried"
        llm_server.reply_error(503, {"error": {"message": "overloaded"}}, when_model="test-model")
        assert ask(http, "fall back")["reply"] == "echo: fall back"
        llm_server.reply_error(400, {"error": {"message": "bad request"}})
        assert ask(http, "refused")["status"] == "failed"

    # The ingress: behind the token, like /api.
    assert httpx.get(f"{fleet.base_url}/metrics").status_code == 401
    ingress = scrape(f"{fleet.base_url}/metrics", TOKEN)
    assert value(ingress, "claw_ingress_messages_total", channel="api", outcome="queued") == 4
    assert value(ingress, "process_resident_memory_bytes") > 0  # the default collectors too

    # The worker: its own server, listed by clawctl status with the ingress's route.
    targets = scrape_targets(fleet)
    assert {t["url"]: t["token"] for t in targets if t["process"].startswith("ingress ")} == {
        f"http://127.0.0.1:{fleet.port}/metrics": True
    }
    worker = scrape(worker_target(fleet)["url"])
    assert value(worker, "claw_runs_total", channel="api", outcome="done") == 3
    assert value(worker, "claw_runs_total", channel="api", outcome="failed") == 1
    assert value(worker, "claw_run_duration_seconds_count", outcome="done") == 3
    assert value(worker, "claw_queue_wait_seconds_count", channel="api") == 4
    assert value(worker, "claw_runs_in_progress") == 0
    llm = {"proxy": "proxy", "protocol": "chat_completions"}
    assert value(worker, "claw_llm_requests_total", model="test-model", outcome="ok", **llm) == 4
    assert value(worker, "claw_llm_requests_total", model="test-model", outcome="transient") == 1
    assert value(worker, "claw_llm_requests_total", model="backup-model", outcome="ok") == 1
    assert value(worker, "claw_llm_requests_total", outcome="invalid_request") == 1
    assert value(worker, "claw_llm_request_duration_seconds_count", **llm) == 7
    assert value(worker, "claw_llm_fallbacks_total", model="test-model", reason="transient") == 1
    assert value(worker, "claw_llm_tokens_total", model="test-model", kind="prompt") > 0
    assert value(worker, "claw_llm_tokens_total", model="test-model", kind="completion") > 0
    assert value(worker, "claw_tool_calls_total", tool="write_file", outcome="ok") == 1
    assert value(worker, "claw_tool_calls_total", tool="unknown", outcome="error") == 1
    assert value(worker, "claw_tool_duration_seconds_count", tool="write_file") == 1

    # Labels are bounded: no chat, session, user text or secret in any of them.
    for samples in (ingress, worker):
        for _name, labels in samples:
            for _key, label in labels:
                for forbidden in ("metrics-chat", "sk-live", "write a file", "no_such_tool"):
                    assert forbidden not in label, (_name, labels)


def test_a_taken_port_moves_the_worker_up_and_zero_turns_it_off(fleet_factory) -> None:
    base = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        fleet = fleet_factory(worker__metrics_port=base)
        fleet.start_ingress()
        fleet.start_worker()
        target = worker_target(fleet)
    port = int(target["url"].rsplit(":", 1)[1].split("/")[0])
    assert base < port < base + 32, target
    assert "claw_runs_in_progress" in httpx.get(target["url"], timeout=10).text
    lines = [json.loads(line) for path in (fleet.home.path / "logs").glob("w1@*.log")
             for line in path.read_text().splitlines()]  # fmt: skip
    assert any(x["event"] == "serving /metrics" and x["port"] == port for x in lines), [
        (x["event"], x.get("port")) for x in lines
    ][:40]

    # 0: no server. (The config is rewritten for the new worker; the others keep theirs.)
    off = fleet_factory(worker__metrics_port=0)
    off.start_worker("w2")

    def registered() -> dict[str, Any] | None:
        report = json.loads(off.home.clawctl("status", "--json").stdout)
        named = any(p.startswith("worker w2@") for p in report["processes"] or ())
        return report if named else None

    report = wait_for(registered, timeout=30, interval=0.5, what="w2 in the registry")
    shown = [t["process"] for t in report["metrics"]]
    assert any(p.startswith("worker w1@") for p in shown), shown
    assert not any(p.startswith("worker w2@") for p in shown), shown


def test_the_ingress_says_its_metrics_want_the_token_given_in_its_environment(
    fleet_factory,
) -> None:
    """As the systemd units and compose give it: CLAW_GATEWAY_TOKEN, not in the config file
    that clawctl reads. The ingress's registry record says so, and a reload keeps it."""
    fleet = fleet_factory()
    fleet.start_ingress(CLAW_GATEWAY_TOKEN=TOKEN)
    [target] = wait_for(lambda: scrape_targets(fleet), timeout=30, what="the ingress's target")
    assert target["process"].startswith("ingress ") and target["token"] is True, target
    assert httpx.get(target["url"], timeout=10).status_code == 401
    assert (
        "claw_ingress_messages_total"
        in httpx.get(target["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    )
    reloaded = fleet.home.clawctl("config", "reload")
    assert reloaded.returncode == 0 and "Applied by 1 process(es)" in reloaded.stdout
    assert [t["token"] for t in scrape_targets(fleet)] == [True]
