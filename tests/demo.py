"""A narrated run of the fleet as its users run it, printed as Markdown: the record in
docs/demo.md, and a test (tests/test_demo.py) so the record cannot drift from what the code
does.

Two hosts run compose.yaml's own commands (``claw-ingress``, ``celery -A claw_worker
worker``, ``celery -A claw_worker beat``, no flags) against one external redis-server,
sharing the workspace, with ``gateway.token`` set; the scripted LLM server (tests/
llm_server.py) stands in for the model API, and ``claw-node`` processes for two devices.
Each scene makes something happen through the interfaces a user has (clawctl, a WebSocket
chat, the HTTP API, the agent's tools), waits for it with a deadline, checks it, and prints
what a user would see:

1. ``clawctl config set`` is applied by every process on both hosts, and a value one
   process rejects is applied nowhere;
2. a cron job added with ``clawctl cron add`` is delivered to a chat, and keeps its slots
   when the active beat is killed with ``kill -9`` and the standby beat takes over;
3. a heartbeat reads HEARTBEAT.md and its reply reaches the last active chat;
4. the Sentinel finds workspace files deleted on purpose, recreates them and says so;
5. a pipeline with a diamond of tasks runs on the fleet and the chat is told;
6. a sub-agent reports back to its chat;
7. two tasks declaring the same resource key take turns;
8. the agent runs commands on nodes, p2p and through the relay;
9. host a's worker is killed with ``kill -9`` mid-run and host b answers every message
   once, in order.

    python -m tests.demo > docs/demo.md
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from claw_worker import constants as k
from tests.demo_fleet import HEARTBEAT, DemoFleet, Transcript
from tests.fixtures.procs import free_port, wait_for
from tests.llm_server import text, tool_call
from tests.test_cron import fires as cron_fires
from tests.test_locks import done, post, waiting_for_keys
from tests.test_multihost import (
    all_done,
    records,
    replies_published,
    run_workers,
    running_on,
)
from tests.test_nodes import ask_agent

BACKUP_NOTE = "The nightly backup has not run since Sunday: /var/backups holds nothing newer."


class Demo(DemoFleet):
    """The scenes, in the order main() plays them."""

    def config_on_the_fleet(self) -> None:
        self.out.scene(
            "1. Config on the fleet",
            "`clawctl config set` on host a reaches every running process on both hosts "
            "(each re-reads, validates and acknowledges over Redis) and is written into host "
            "b's file too. A value that one process rejects (host b cannot create that log "
            "directory: a file is in the way) is applied nowhere and host a's file is "
            "restored.",
        )
        self.clawctl("config", "set", "agents.defaults.temperature", "0.3")
        assert self.b.read_config()["agents"]["defaults"]["temperature"] == 0.3
        (self.b.home / "blocked").write_text("a file where host b's log directory would go")
        before = self.a.config_file.read_text()
        said = self.clawctl("config", "set", "logging.dir", "~/blocked/logs", code=1)
        assert "Rejected, nothing was applied" in said and self.a.config_file.read_text() == before

    def cron_and_failover(self) -> None:
        team = self.team
        self.out.scene(
            "2. A cron job, through a beat failover",
            "A job every 3 s, delivered to the WebSocket chat `team`. After two deliveries "
            "the active beat is killed with `kill -9`; the other host's standby takes "
            "RedBeat's lock and the job goes on: no slot fired twice.",
        )
        self.llm.add_rule("STANDUP", "Standup: 2 pull requests wait for review; CI is green.")
        added = self.clawctl("cron", "add", "-n", "standup", "-m", "STANDUP: sum up the open "
                             "pull requests", "-e", "3", "-d", "--channel", "ws", "--to", "team")  # fmt: skip
        job_id = re.search(r"added job ([0-9a-f]{8})", added).group(1)  # type: ignore[union-attr]
        team.wait_replies("Standup:", 2, timeout=30)
        active, standby = self.beats()
        active.kill("beat")
        killed, killed_at = time.monotonic(), time.time()
        self.out.write(f"{self.out.clock()} `kill -9` host {active.name}'s beat.\n")
        wait_for(standby.beat_is_active, timeout=60, what="the standby beat to take over")
        self.out.write(f"{self.out.clock()} host {standby.name}'s beat took the lock after "
                       f"{time.monotonic() - killed:.1f} s (beat.lock_timeout_sec 8).\n")  # fmt: skip
        delivered = len(team.replies("Standup:"))
        team.wait_replies("Standup:", delivered + 2, timeout=30)
        self.clawctl("cron", "list")
        fires = cron_fires(self.r, job_id)
        dues = [due for due, _ in fires]
        assert len(set(dues)) == len(dues), f"a slot fired twice: {dues}"
        assert all((due - dues[0]) % 3 == 0 for due in dues), f"off the 3 s grid: {dues}"
        last_before = max(due for due, stored in fires if stored < killed_at)
        first_after = min(due for due, stored in fires if stored > killed_at)
        assert first_after == last_before + 3, f"the slot after the kill was skipped: {dues}"
        self.out.block(
            "\n".join(f"due {datetime.fromtimestamp(due, UTC):%H:%M:%S}  in its mailbox "
                      f"{datetime.fromtimestamp(stored, UTC):%H:%M:%S.%f}"[:-3]
                      + (f"  ({stored - due:.1f} s late: the slot due while no beat was "
                         "active)" if stored - due > 2 else "")
                      for due, stored in fires),
            f"Each fire ({len(fires)}), by the slot it is for (a fire's message id is the job "
            "and its slot, so no slot can run twice)",
        )  # fmt: skip
        self.out.write(
            "The slot that fell due while no beat held the lock fired once, late, when the "
            "standby took over; a slot that fell wholly inside the outage is folded into that one "
            "late fire rather than replayed, and then the 3 s pace resumes.\n"
        )
        self.out.chat("agent, in chat team (each delivery)", team.replies("Standup:")[-1])
        self.clawctl("cron", "remove", job_id)

    def afterwards(self) -> None:
        self.out.scene("10. The fleet afterwards", "One screen for the operator.")
        self.clawctl("status")

    def host_dies(self) -> None:
        self.out.scene(
            "9. A host dies mid-run",
            "Six sessions of three messages each, with the model taking 1 s per answer. "
            "While host a's worker is running one of them it is killed with `kill -9`. "
            "Its lease runs out, host b takes the message over, and every message is "
            "answered once, in order.",
        )
        self.llm.default_delay = 1.0
        sent = {f"api:order-{n}": [f"order {n} #{i}" for i in range(3)] for n in range(6)}
        with self.http() as http:
            ids = {s: [post(http, words, s)["message_id"] for words in sent[s]] for s in sent}

        wait_for(lambda: running_on(self.r, ids, self.workers["a"]), timeout=60,
                 what="host a's worker to be running a message")  # fmt: skip
        self.a.kill("worker")
        self.out.write(f"{self.out.clock()} `kill -9` host a's worker ({self.workers['a']}) "
                       "in the middle of a run.\n")  # fmt: skip
        wait_for(lambda: all_done(self.r, ids), timeout=120, interval=0.3,
                 what="every message to be answered")  # fmt: skip
        self.llm.default_delay = 0.0
        self.out.write(f"{self.out.clock()} every message answered.\n")
        answered = records(self.r, ids)
        workers = run_workers(self.r, answered)
        published = replies_published(self.r)
        rows = []
        for session, mids in ids.items():
            history = [json.loads(m) for m in self.r.lrange(k.history_key(session), 0, -1)]
            assert [m["content"] for m in history if m["role"] == "user"] == sent[session]
            for words, mid in zip(sent[session], mids, strict=True):
                rec = answered[mid]
                assert rec["reply"] == f"echo: {words}" and published.get(mid) == 1
                rows.append(f"{session:12} {words:12} attempts {rec['attempts']}  "
                            f"replies sent {published[mid]}  answered by {workers[mid]}")  # fmt: skip
        retried = sum(int(rec["attempts"]) > 1 for rec in answered.values())
        assert retried, "no run was cut off on host a"
        self.out.block("\n".join(rows), f"Each message ({retried} taken over from host a)")

    def heartbeat(self) -> None:
        team = self.team
        self.out.scene(
            "3. A heartbeat",
            "HEARTBEAT.md holds one open item. Every 4 s (heartbeat.every_sec) the agent "
            "reads it in session `heartbeat:main`; answers of HEARTBEAT_OK are dropped. Now "
            "the model finds something, and the reply goes to the last chat a user wrote in.",
        )
        self.out.block((self.workspace / "HEARTBEAT.md").read_text(), "HEARTBEAT.md")
        before = len(self.llm.requests_for(HEARTBEAT))
        self.llm.push(text(BACKUP_NOTE), when=HEARTBEAT)
        [note] = team.wait_replies(BACKUP_NOTE, timeout=30)
        self.out.chat("agent, unasked, in chat team", note)
        self.out.write(f"Heartbeats seen by the model so far: {len(self.llm.requests_for(HEARTBEAT))} "
                       f"({before} before this scene, all answered HEARTBEAT_OK and not "
                       "delivered).\n")  # fmt: skip

    def sentinel(self) -> None:
        ops = self.ops
        self.out.scene(
            "4. A Sentinel heal",
            "`AGENTS.md` and the `memory/` directory are deleted from the shared workspace. "
            "Within one round (sentinel.interval_sec 5) the Sentinel, run by beat on a "
            "worker, finds them missing, recreates them from the templates, and alerts the "
            "`ops` chat (sentinel.notify_channel).",
        )
        agents, memory = self.workspace / "AGENTS.md", self.workspace / "memory"
        assert not ops.replies("workspace"), ops.replies()  # onboarded: nothing to heal so far
        agents.unlink()
        shutil.rmtree(memory)
        self.out.write(f"{self.out.clock()} deleted AGENTS.md and memory/.\n")
        [alert] = ops.wait_replies("FAIL workspace", timeout=40)
        assert agents.exists() and memory.is_dir()
        self.out.chat("Sentinel, in chat ops", alert)
        status = self.clawctl("status", show=False)
        line = next(x for x in status.splitlines() if x.startswith("sentinel "))
        self.out.block(f"$ clawctl status | grep ^sentinel\n{line}")

    def pipeline(self) -> None:
        team = self.team
        self.out.scene(
            "5. A pipeline",
            "The agent plans four tasks, A, then B and C, then D (a diamond), with shared "
            "state, and dispatches them. Each task runs as an agent run of its own session "
            "`pipeline:diamond:<task>`, with its role in the system prompt and what it "
            "depends on in context; the chat is told when the pipeline finishes.",
        )
        tasks = [
            {"id": "A", "role": "researcher", "goal": "gather the facts [[TA]]"},
            {"id": "B", "role": "writer", "goal": "draft the text [[TB]]", "depends_on": ["A"]},
            {"id": "C", "role": "checker", "goal": "check the facts [[TC]]", "depends_on": ["A"]},
            {"id": "D", "role": "editor", "goal": "combine both [[TD]]", "depends_on": ["B", "C"]},
        ]  # fmt: skip
        self.llm.push(
            tool_call("pipeline_create", {"pipeline_id": "diamond", "tasks": tasks,
                                          "goal": "a one-page report on the backups"}),
            tool_call("pipeline_state_set", {"key": "audience", "value": "the ops team"}),
            tool_call("pipeline_dispatch", {}),
            text("I planned four tasks; they are running."),
            when="[[PLAN]]",
        )  # fmt: skip
        self.llm.reply("Facts: 3 backups failed this week, all on Sunday.", when="[[TA]]")
        self.llm.reply("Draft: the Sunday backup fails.", when="[[TB]]", delay=1.0)
        self.llm.reply("Checked: the three failures are in the logs.", when="[[TC]]", delay=1.0)
        self.llm.reply("Report: the Sunday backup fails; fix the cron entry.", when="[[TD]]")
        self.say(team, "Write a report on the backups [[PLAN]]", "Pipeline diamond finished")
        self.say(team, "/pipeline status diamond", "diamond")
        runs = [self.r.hgetall(k.run_key(run_id)) for run_id in self.r.zrange(k.RUNS_INDEX, 0, -1)]
        ran = sorted(
            (run["session_key"], run["worker"]) for run in runs
            if run.get("session_key", "").startswith("pipeline:diamond:")
        )  # fmt: skip
        assert [session for session, _ in ran] == [f"pipeline:diamond:{t}" for t in "ABCD"]
        self.out.block("\n".join(f"{s:22} ran on {w}" for s, w in ran), "Where each task ran")

    def spawn(self) -> None:
        team = self.team
        self.out.scene(
            "6. A sub-agent",
            "The agent starts a sub-agent (`spawn`) with a role; it runs in its own session "
            "and its result comes back to the parent session as a new message, which the "
            "agent answers in the chat.",
        )
        self.llm.push(tool_call("spawn", {"task": "find when the backup job last succeeded "
                                          "[[SUB]]", "role": "researcher"}),
                      text("I asked a researcher to look into it."), when="[[BOSS]]")  # fmt: skip
        self.llm.reply("Last success: Saturday 02:00 UTC.", when="[[SUB]]", delay=0.5)
        self.llm.reply("The researcher found the last good backup: Saturday 02:00 UTC.",
                       when="Last success: Saturday")  # fmt: skip
        self.say(team, "When did the backup last work? [[BOSS]]", "The researcher found")
        record = self.r.hgetall(
            k.spawn_key("spawn:ws:team:1")
        )  # /ws keys session "team" as ws:team
        self.out.block(json.dumps({key: record[key] for key in ("status", "depth", "role",
                                   "result")}, indent=1), "The sub-agent's record")  # fmt: skip

    def lock_conflict(self) -> None:
        self.out.scene(
            "7. A resource-lock conflict",
            "Two tasks declare the same key (`[keys: repo:backup-scripts]`), from two "
            "sessions. The second waits in `resource_lock` (shown by `/status`) and runs "
            "when the first has released the key.",
        )
        self.llm.add_rule("TASK-ONE", text("Task one: patched the backup script.", delay=3))
        self.llm.add_rule("TASK-TWO", text("Task two: tested the backup script."))
        with self.http() as http:
            one = post(http, "[keys: repo:backup-scripts] TASK-ONE patch it", "api:lock-one")
            wait_for(lambda: self.llm.requests_for("TASK-ONE"), timeout=30, what="task one")
            two = post(http, "[keys: repo:backup-scripts] TASK-TWO test it", "api:lock-two")
            waiting_for_keys(self.r, two)
            status = post(http, "/status", "api:lock-two")["reply"]
            self.out.block(status, "`/status` in session api:lock-two while it waits")
            first = done(self.r, "api:lock-one", one["message_id"])
            second = done(self.r, "api:lock-two", two["message_id"])
        assert first["status"] == second["status"] == "done"
        assert float(second["started_at"]) >= float(first["finished_at"])
        zero = float(first["started_at"])
        self.out.block(
            "\n".join(
                f"{name}: started +{float(m['started_at']) - zero:.2f}s, finished "
                f"+{float(m['finished_at']) - zero:.2f}s: {m['reply']}"
                for name, m in (("task one", first), ("task two", second))
            ),
            "The two runs",
        )

    def node_round_trip(self) -> None:
        self.out.scene(
            "8. Nodes",
            "Two `claw-node` agents register with the gateway (its token required): `desk` "
            "serves HTTP (p2p), `phone` keeps a WebSocket to the ingress (relay). The agent's "
            "`nodes` tool runs a command on each; every dispatch is audited.",
        )
        desk_port = free_port()
        self.start_node("desk", "--listen", f"127.0.0.1:{desk_port}")
        self.start_node("phone", "--relay", "--capabilities", "run,invoke")
        self.clawctl("nodes", "list")
        with self.http() as http:
            for marker, args in (
                ("[[DESK]]", {"action": "run", "node": "desk", "command": "echo on the desk"}),
                ("[[PHONE]]", {"action": "run", "node": "phone", "command": "echo on the phone"}),
            ):  # fmt: skip
                envelope = ask_agent(http, self.llm, marker, args)
                assert envelope["ok"], envelope
                self.out.block(json.dumps(envelope, indent=1),
                               f"What the `nodes` tool answered the model for {args}")  # fmt: skip
        audit = self.workspace / "memory" / "nodes-dispatch-audit.jsonl"
        self.out.block(audit.read_text(), "memory/nodes-dispatch-audit.jsonl")


def main() -> int:
    # SIGTERM (a timeout, Ctrl-C's cousin) unwinds like an error: every process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Transcript()
    out.write("# clawfleet, shown working\n")
    out.write(f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m tests.demo` "
              "(tests/demo.py; tests/test_demo.py runs it in CI). The model is the scripted "
              "LLM server of the tests, on loopback: what it answers is set by each scene.\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="claw-demo-") as root, ExitStack() as stack:
        demo = Demo(Path(root), stack, out)
        out.play(
            [demo.start, demo.config_on_the_fleet, demo.cron_and_failover, demo.heartbeat,
             demo.sentinel, demo.pipeline, demo.spawn, demo.lock_conflict,
             demo.node_round_trip, demo.host_dies, demo.afterwards],
            lambda: {f"host {h.name} {name}": h.output(name) for h in (demo.a, demo.b)
                     for name in h.procs},
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
