"""The operator's side of clawfleet, narrated as Markdown: the record in docs/demo-ops.md,
and a test (tests/test_demo.py) so the record cannot drift from what the code does.

1. ``clawctl gateway`` writes systemd units and drives them; the units' own commands then
   run the fleet (on its embedded Redis) and answer a message;
2. ``clawctl skills install`` from a server speaking GitHub codeload's archive URLs, the
   agent running the skill's script, and a malicious archive refused;
3. Prometheus metrics scraped from the ingress and the worker;
4. ``clawctl uninstall``.

systemd itself cannot run in this container (it is not PID 1, and ``systemd --user`` needs
a booted systemd), so ``systemctl`` is the stand-in of tests/fixtures/systemd.py, which
records each call; the unit files are the real ones, and their ExecStart lines are started
as systemd would start them.

    python -m tests.demo_ops > docs/demo-ops.md
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.codeload_server import CodeloadServer
from tests.demo_fleet import Transcript
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import free_port, wait_for
from tests.fixtures.systemd import SystemdStandIn
from tests.llm_server import LLMServer

TOKEN = "ops-gateway-token-0123456789abcdef"
API_KEY = "sk-ops-demo-key-0123456789"
UNITS = ["clawfleet-redis.service", "clawfleet-worker.service", "clawfleet-beat.service",
         "clawfleet-ingress.service"]  # fmt: skip
SKILL_MD = """---
name: greet
description: Greet someone by name.
metadata: {"openclaw": {"requires": {"bins": ["sh"]}}}
---

# greet

Run `skill_exec name=greet script=greet.sh args=["NAME"]`.
"""
GREET_SH = '#!/bin/sh\necho "Hello, $1! (from the greet skill)"\n'
SHOWN_FAMILIES = (
    "claw_ingress_messages", "claw_runs", "claw_llm_requests", "claw_llm_tokens",
    "claw_tool_calls",
)  # fmt: skip


def skill_entries(*extra: tuple[str, ...]) -> list[tuple[object, ...]]:
    return [
        ("dir", ""), ("dir", "skills"), ("dir", "skills/greet"),
        ("file", "skills/greet/SKILL.md", SKILL_MD), ("dir", "skills/greet/scripts"),
        ("file", "skills/greet/scripts/greet.sh", GREET_SH, 0o755), *extra,
    ]  # fmt: skip


class OpsDemo:
    def __init__(self, root: Path, stack: ExitStack, out: Transcript) -> None:
        self.out = out
        self.home = ClawHome(root / "claw")
        self.home.path.mkdir()
        self.llm = LLMServer().start()
        stack.callback(self.llm.stop)
        self.codeload = CodeloadServer().start()
        stack.callback(self.codeload.stop)
        self.sd = SystemdStandIn(root / "systemd", self.home).install()
        stack.callback(self.sd.stop_units)
        self.port = free_port()
        self.env = self.sd.env(CLAW_SYSTEMD_SCOPE="user")

    def clawctl(self, *args: str, code: int = 0) -> str:
        result = self.sd.clawctl(*args, env=self.env)
        return self.out.command(["clawctl", *args], result, code=code)

    def calls(self) -> None:
        shown = "\n".join("systemctl " + " ".join(call) for call in self.sd.calls())
        self.out.block(shown, "What `systemctl` was asked (recorded by the stand-in)")
        self.sd.forget_calls()

    def ask(self, words: str, session: str = "api:ops") -> str:
        answer = httpx.post(
            f"http://127.0.0.1:{self.port}/api/message", timeout=90,
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"text": words, "session": session, "wait": True, "timeout": 60},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        reply = answer.json()["reply"]
        self.out.chat("user", words)
        self.out.chat("agent", reply)
        return reply

    # -- the scenes --------------------------------------------------------------------------

    def services(self) -> None:
        self.out.scene(
            "1. Services",
            "A config with no `redis.url` (so the fleet brings its own Redis), then "
            "`clawctl gateway`. It writes user units here (CLAW_SYSTEMD_SCOPE=user; run as "
            "root it writes hardened system units by default); secrets go in the "
            "environment file, never in a unit.",
        )
        self.home.write_config({
            "providers": {"proxy": {"api_base": self.llm.base_url, "models": ["test-model"]}},
            "gateway": {"port": self.port}, "worker": {"concurrency": 4},
            "skills": {"archive_base": self.codeload.url},
        })  # fmt: skip
        self.clawctl("gateway")
        self.calls()
        worker_unit = self.sd.units / "clawfleet-worker.service"
        self.out.block(worker_unit.read_text(), f"{worker_unit.name}, as written")
        env_file = self.home.path / "clawfleet.env"
        with env_file.open("a") as fh:
            fh.write(f"CLAW_API_KEY={API_KEY}\nCLAW_GATEWAY_TOKEN={TOKEN}\n")
        self.out.write(f"The key and the gateway token go into {env_file.name} "
                       f"(mode {env_file.stat().st_mode & 0o777:o}).\n")  # fmt: skip
        self.clawctl("gateway", "status")
        self.clawctl("gateway", "restart", "--only", "worker")
        self.calls()
        self.out.write("Now each unit's ExecStart, in the target's order, with its Environment= "
                       "and EnvironmentFile=, as systemd runs them:\n")  # fmt: skip
        self.sd.start_units(UNITS)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200,
                 timeout=60, what="the ingress unit")  # fmt: skip
        self.ask("hello, units")
        assert self.llm.requests[-1]["messages"], "the worker unit reached the model"
        auth = self.llm.request_headers[-1].get("authorization")
        assert auth == f"Bearer {API_KEY}", "the key came from the EnvironmentFile"
        self.out.write("The model was called with the key from the environment file.\n")

    def metrics(self) -> None:
        self.out.scene(
            "3. Metrics",
            "The ingress serves `/metrics` behind the gateway token; each worker serves its "
            "own, listed by `clawctl status --json`. A few families, parsed with "
            "prometheus_client's parser:",
        )
        assert httpx.get(f"http://127.0.0.1:{self.port}/metrics").status_code == 401
        targets = json.loads(self.sd.clawctl("status", "--json", env=self.env).stdout)["metrics"]
        for target in targets:
            # The token is in the units' environment file, not the config: the ingress itself
            # tells the registry that its /metrics wants it.
            headers = {"Authorization": f"Bearer {TOKEN}"} if target["token"] else {}
            scraped = httpx.get(target["url"], headers=headers, timeout=10)
            assert scraped.status_code == 200, scraped.text
            lines = [
                f"{sample.name}{{{','.join(f'{k}={v!r}' for k, v in sorted(sample.labels.items()))}}} {sample.value:g}"
                for family in text_string_to_metric_families(scraped.text)
                if family.name.startswith(SHOWN_FAMILIES)
                for sample in family.samples
                if not sample.name.endswith("_created")
            ]  # fmt: skip
            assert lines, f"no claw_ metrics from {target['url']}"
            self.out.block("\n".join(lines), f"{target['process']}: {target['url']}")

    def skills(self) -> None:
        self.out.scene(
            "2. Skills",
            "A skill installed from a GitHub-shaped archive server (skills.archive_base; "
            "the default is codeload.github.com), offered to the model by name and "
            "description, and run by the agent with `skill_exec`. Then an archive with a "
            "symlink out of the skill is refused, and nothing is written.",
        )
        self.codeload.add("acme", "ops-skills", "v1", skill_entries())
        self.clawctl("skills", "install", "acme/ops-skills/skills/greet@v1")
        self.clawctl("skills", "list")
        self.llm.reply_tool_call("skill_exec", {"name": "greet", "script": "greet.sh",
                                                "args": ["Ada"]}, when="[[GREET]]")  # fmt: skip
        self.llm.reply("The greet skill says: Hello, Ada!", when="[[GREET]]")
        self.ask("Greet Ada with the greet skill [[GREET]]")
        [first, second] = self.llm.requests_for("[[GREET]]")
        assert "greet: Greet someone by name." in first["messages"][0]["content"]
        result = second["messages"][-1]["content"]
        assert "Hello, Ada! (from the greet skill)" in result, result
        self.out.block(result, "The tool result the model got from `skill_exec`")
        before = sorted(p.name for p in (self.home.workspace / "skills").rglob("*"))
        hostile = skill_entries(("symlink", "skills/greet/passwd", "../../../../etc/passwd"))
        self.codeload.add("mallory", "skills", "main", hostile)
        self.clawctl("skills", "install", "mallory/skills/skills/greet@main", "--force", code=1)
        after = sorted(p.name for p in (self.home.workspace / "skills").rglob("*"))
        assert after == before, "the refused archive changed skills/"
        self.out.write("`skills/` is exactly as before.\n")

    def uninstall(self) -> None:
        self.out.scene(
            "4. Uninstall",
            "`clawctl uninstall` stops and disables the units and removes their files; "
            "config, workspace and logs stay unless `--purge` is given.",
        )
        self.clawctl("uninstall")
        self.calls()
        self.sd.stop_units()  # what systemd does on the stop it was asked for
        assert not list(self.sd.units.glob("clawfleet*"))
        assert self.home.config_file.exists() and self.home.workspace.is_dir()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Transcript()
    out.write("# Operating clawfleet, shown working\n")
    out.write("Recorded by `python -m tests.demo_ops` (tests/demo_ops.py; tests/test_demo.py "
              "runs it in CI). The model is the scripted LLM server of the tests, on "
              "loopback; `systemctl` is a stand-in that records its calls (systemd cannot "
              "run in this container); everything else is real.\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="claw-ops-") as root, ExitStack() as stack:
        demo = OpsDemo(Path(root), stack, out)
        systemd = Path(root, "systemd")
        out.play(
            [demo.services, demo.skills, demo.metrics, demo.uninstall],
            lambda: {log.name: log.read_text(errors="replace") for log in systemd.glob("*.log")},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
