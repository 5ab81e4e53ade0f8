"""The fleet tests/demo.py runs, and the transcript it prints: two hosts started with
compose.yaml's commands on one external redis-server, sharing a workspace, with
``gateway.token`` set, the scripted LLM server standing in for the model API, and
``claw-node`` processes for devices. Everything started is stopped through the ExitStack."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from claw_worker import constants as k
from tests.fixtures.hosts import BIN, Host
from tests.fixtures.procs import free_port, stop_process, wait_for
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.ws_chat import WsChat
from tests.llm_server import LLMServer
from tests.test_reload import clawctl

TOKEN = "demo-gateway-token-0123456789abcdef"
HEARTBEAT = "## HEARTBEAT.md"  # in every heartbeat's message to the model
SELFCHECK = "[start-up self-check]"


class Transcript:
    """Markdown on stdout, flushed as it goes (a scene that fails shows what came before)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def write(self, text_: str = "") -> None:
        print(text_, flush=True)

    def scene(self, title: str, what: str) -> None:
        self.write(f"\n## {title}\n\n{what}\n")

    def block(self, text_: str, label: str = "") -> None:
        if label:
            self.write(f"{label}:\n")
        self.write(f"```\n{text_.rstrip()}\n```\n")

    def chat(self, who: str, said: str) -> None:
        quoted = "\n".join(f"> {line}" for line in said.strip().splitlines())
        self.write(f"**{who}:**\n{quoted}\n")

    def clock(self) -> str:
        return f"+{time.monotonic() - self.started:.1f}s"

    def command(
        self,
        argv: list[str],
        result: subprocess.CompletedProcess[str],
        *,
        code: int = 0,
        show: bool = True,
    ) -> str:
        """What a command that ran printed (both streams), shown as typed unless ``show`` is
        off; an exit other than ``code`` fails the demo."""
        said = result.stdout + result.stderr
        assert result.returncode == code, f"{shlex.join(argv)} exited {result.returncode}: {said}"
        if show:
            exit_note = f"(exit {code})\n" if code else ""
            self.block(f"$ {shlex.join(argv)}\n{said}{exit_note}")
        return said

    def play(
        self, scenes: list[Callable[[], object]], outputs: Callable[[], dict[str, str]]
    ) -> None:
        """Run the scenes in order. When one fails, the tail of each process's output (by
        label, from ``outputs``) goes to stderr before the error."""
        try:
            for scene in scenes:
                scene()
        except BaseException:
            for label, text in outputs().items():
                tail = "\n".join(text.splitlines()[-40:])
                print(f"--- {label} ---\n{tail}", file=sys.stderr)
            raise
        self.write(f"Finished in {self.clock()[1:]}.")


class DemoFleet:
    def __init__(self, root: Path, stack: ExitStack, out: Transcript) -> None:
        self.out = out
        self.stack = stack
        data = root / "redis-data"
        data.mkdir()
        self.redis = RedisServer.launch(data)
        stack.callback(self.redis.stop)
        self.r = self.redis.client()
        self.llm = LLMServer().start()
        stack.callback(self.llm.stop)
        self.workspace = root / "shared-workspace"
        self.port = free_port()
        self.a = Host("a", root / "host-a", self.redis.url)
        self.b = Host("b", root / "host-b", self.redis.url)
        self.nodes: list[subprocess.Popen] = []
        self.workers: dict[str, str] = {}  # host name -> its worker's node name
        self.ops: WsChat  # the chats start() opens: the Sentinel's, and the team's
        self.team: WsChat
        for host in (self.a, self.b):
            host.root.mkdir()
            stack.callback(host.stop)
        stack.callback(lambda: [stop_process(node) for node in self.nodes])

    def config(self) -> dict[str, Any]:
        return {
            "providers": {
                "proxy": {
                    "api_base": self.llm.base_url,
                    "api_key": "sk-demo-secret-key-123456",
                    "models": ["test-model"],
                }
            },
            "gateway": {"port": self.port},
            "agents": {
                "defaults": {"workspace": str(self.workspace), "heartbeat": {"every_sec": 4}}
            },
            "worker": {"concurrency": 4, "lease_sec": 5, "resource_lock_retry_sec": 1},
            "beat": {"lock_timeout_sec": 8},
            "sentinel": {
                "interval_sec": 5,
                "min_free_mb": 0,
                "notify_channel": "ws",
                "notify_chat_id": "ops",
            },
        }

    def start(self) -> None:
        """The fleet, and two chats held open: ``ops`` (the Sentinel's) and ``team``."""
        self.out.scene(
            "0. The fleet", "Two hosts sharing one external redis-server and a workspace."
        )
        for host in (self.a, self.b):
            host.write_config(self.config())
            host.home.mkdir()
        self.clawctl("onboard", show=False)  # the shared workspace, from host a
        (self.workspace / "HEARTBEAT.md").write_text(
            "# Heartbeat\n- [ ] check that the nightly backup ran\n"
        )
        self.llm.add_rule(HEARTBEAT, "HEARTBEAT_OK")  # unless a scene queues another answer
        self.llm.add_rule(SELFCHECK, "HEARTBEAT_OK")
        self.a.start("ingress", CLAW_GATEWAY_TOKEN=TOKEN)
        for host in (self.a, self.b):
            host.start("worker", CLAW_GATEWAY_TOKEN=TOKEN)
            host.start("beat", CLAW_GATEWAY_TOKEN=TOKEN)
        wait_for(lambda: httpx.get(f"{self.base_url}/health").status_code == 200, timeout=60,
                 what="the ingress")  # fmt: skip
        self.workers = {host.name: host.wait_worker_ready() for host in (self.a, self.b)}
        wait_for(lambda: self.a.beat_is_active() or self.b.beat_is_active(), timeout=30,
                 what="a beat to take RedBeat's lock")  # fmt: skip
        commands = "\n".join(
            f"host {host.name}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}"
            for host in (self.a, self.b)
            for cmd in (p.args for p in host.procs.values())
        )
        self.out.block(commands, "Started, as compose.yaml runs them")
        active, standby = self.beats()
        self.ops = self.chat("ops")
        self.team = self.chat("team")
        self.out.write(f"Workers ready: {', '.join(self.workers.values())}. Host {active.name}'s beat took "
                       f"RedBeat's lock; host {standby.name}'s waits as a standby.\n")  # fmt: skip

    def beats(self) -> tuple[Host, Host]:
        """The host whose beat is active, and the other."""
        return (self.a, self.b) if self.a.beat_is_active() else (self.b, self.a)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    def chat(self, session: str) -> WsChat:
        chat = WsChat(f"ws://127.0.0.1:{self.port}/ws", session, token=TOKEN)
        self.stack.callback(chat.close)
        chat.send(f"hello from {session}")
        chat.wait_replies(f"echo: hello from {session}")
        return chat

    def clawctl(self, *args: str, show: bool = True, code: int = 0) -> str:
        """Run clawctl on host a, expecting exit ``code``; what it printed (both streams)."""
        result = clawctl(self.a, *args, CLAW_GATEWAY_TOKEN=TOKEN)
        return self.out.command(["clawctl", *args], result, code=code, show=show)

    def say(self, chat: WsChat, words: str, until: str, timeout: float = 60) -> list[str]:
        """Say ``words`` in the chat and print the conversation until a reply has ``until``."""
        before = len(chat.replies(session=chat.session))
        chat.send(words)
        self.out.chat("user", words)
        wait_for(lambda: any(until in r for r in chat.replies(session=chat.session)[before:]),
                 timeout=timeout, what=f"a reply containing {until!r}")  # fmt: skip
        replies = chat.replies(session=chat.session)[before:]
        for reply in replies:
            self.out.chat("agent", reply)
        return replies

    def start_node(self, node_id: str, *args: str) -> None:
        env = self.a.env("ingress", CLAW_GATEWAY_TOKEN=TOKEN,
                         CLAW_NODE_TOKEN=f"{node_id}-own-token-0123456789")  # fmt: skip
        log = open(self.a.root / f"node-{node_id}.out", "ab")  # noqa: SIM115 - lives with it
        node = subprocess.Popen(
            [str(BIN / "claw-node"), "--gateway", self.base_url, "--id", node_id, *args],
            env=env, cwd=self.a.home, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.nodes.append(node)
        wait_for(lambda: node.poll() is None and self.r.hexists(k.NODES, node_id), timeout=30,
                 what=f"node {node_id} to register")  # fmt: skip
        if "--relay" in args:
            wait_for(lambda: self.r.exists(k.node_connection_key(node_id)), timeout=30,
                     what=f"node {node_id}'s relay connection")  # fmt: skip
