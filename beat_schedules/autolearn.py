"""Auto-learning: while the user is away, the agent reviews recent runs and writes what is
worth reusing to memory as procedures.

Switched with ``/autolearn`` (admins) or "start auto-learning"; its state is the
``autolearn_*`` part of the hash ``constants.AUTONOMY``. It shares the autonomy tick
(``autonomy.tick`` calls :func:`tick`): when on, the user has been away
``autonomy_idle_threshold_sec`` (LAST_ACTIVE, any chat), the previous review is over and
``max(autonomy_min_run_interval_sec, the asked interval)`` (30 minutes unless asked) has
passed, and runs have finished since the last review, one round is submitted: a message
(origin ``autolearn``) in the session ``autolearn:main`` holding a digest of those runs
(``digest.py``), asking for ``memory_write`` calls with layer ``procedures``. Its reply is
not delivered. With no new runs there is no round and no LLM call. The session's history is
cleared before each round: what was learned is in memory, and old digests would only make
every round more expensive.

A user message resets the count of rounds; after ``autolearn_max_rounds_without_user``
rounds without one, auto-learning stops and tells the chat that switched it on (or the last
active chat) why.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import redis

from beat_schedules.digest import digest, recent_runs
from claw_worker import constants as k
from claw_worker.autonomy_state import (
    DEFAULT_AUTOLEARN_SEC,
    Autolearn,
    Chat,
    change,
    human,
    last_active,
    notify,
)
from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus, Origin
from claw_worker.session.mailbox import Mailbox
from claw_worker.session.runs import FINISHED
from claw_worker.session.submit import submit

if TYPE_CHECKING:
    from claw_worker.config.schema import RuntimeControlConfig

CHANNEL = Origin.AUTOLEARN.value  # never delivered
SESSION_KEY = f"{CHANNEL}:main"
ROUND_PREFIX = "autolearn-"  # message ids: autolearn-<start ms>-<n>
RUNS_REVIEWED = 50  # at most, per round
ROUND_TEXT = (
    "[autolearn round {n}] Review these recent runs and keep what is worth reusing. For each "
    "lesson (a way of doing something that worked, a mistake to avoid next time) call "
    'memory_write with layer "procedures" and one short, general instruction; search with '
    "memory_search first so you do not save what is already there, and save nothing that "
    "only matters to one conversation. Then reply with one line saying what you saved, or "
    "NOTHING_LEARNED.\n\n## Recent runs\n\n{digest}"
)
Ready = list[tuple[float, dict[str, str]]]  # (queued time, run record), oldest first
Outcome = tuple[Autolearn, str, str]


def tick(client: redis.Redis, config: Config, now: float) -> str:
    state = Autolearn.from_hash(client.hgetall(k.AUTONOMY))
    if not state.enabled:
        return ""
    control = config.agents.defaults.runtime_control
    chat = last_active(client.get(k.LAST_ACTIVE))
    busy = any(Mailbox(client).probe(SESSION_KEY))
    runs = recent_runs(client, since=state.reviewed_until, limit=RUNS_REVIEWED)
    ready: Ready = []  # the runs to review: finished ones, up to the oldest unfinished
    for queued, run in reversed(runs):
        if run.get("status") not in FINISHED:
            break
        ready.append((queued, run))
    seen = chat.at if chat else 0.0
    outcome = change(
        client, Autolearn, lambda s: _decide(s, control, now, seen, busy, ready, state.started_at)
    )
    return _act(client, config, outcome, ready)


def record(
    client: redis.Redis, config: Config, message: InboundMessage, status: MessageStatus, text: str
) -> None:
    """A round finished: keep its one-line result; stop at the rounds limit."""
    control, now = config.agents.defaults.runtime_control, time.time()

    def finished(s: Autolearn) -> tuple[Autolearn, Outcome]:
        if not s.enabled or not message.message_id.startswith(_prefix(s)):
            return s, (s, "ignored", "not a round of this start")
        result = " ".join(text.split())[:200] if status is MessageStatus.DONE else status.value
        s = replace(s, last_result=f"round {s.total}: {result}")
        return _stop_at_limit(s, control, now) or (s, (s, "finished", s.last_result))

    _act(client, config, change(client, Autolearn, finished), [])


def _prefix(state: Autolearn) -> str:
    return f"{ROUND_PREFIX}{int(state.started_at * 1000)}-"


def _stop_at_limit(
    s: Autolearn, control: RuntimeControlConfig, now: float
) -> tuple[Autolearn, Outcome] | None:
    limit = control.autolearn_max_rounds_without_user
    if s.rounds < limit:
        return None
    reason = (f"{s.rounds} review round(s) without hearing from you "
              f"(runtime_control.autolearn_max_rounds_without_user is {limit})")  # fmt: skip
    stopped = s.stop(reason, now)
    return stopped, (stopped, "stop", reason)


def _decide(
    s: Autolearn, control: RuntimeControlConfig, now: float, seen: float, busy: bool,
    ready: Ready, started_at: float,
) -> tuple[Autolearn, Outcome]:  # fmt: skip
    if not s.enabled or s.started_at != started_at:
        return s, (s, "wait", "switched meanwhile")
    if seen > s.user_seen_at:
        s = replace(s, user_seen_at=seen, rounds=0)
    stopped = _stop_at_limit(s, control, now)
    if stopped:
        return stopped
    every = max(control.autonomy_min_run_interval_sec, s.interval_sec or DEFAULT_AUTOLEARN_SEC)
    away = now - max(seen, s.user_seen_at)
    if busy:
        return s, (s, "wait", "the previous review is still running")
    if now - s.last_round_at < every:
        return s, (s, "wait", f"next review in {human(every - (now - s.last_round_at))}")
    if away < control.autonomy_idle_threshold_sec:
        return s, (s, "wait", f"the user was active {human(away)} ago")
    if not ready:
        return s, (s, "wait", "no new finished runs to review")
    s = replace(s, total=s.total + 1, rounds=s.rounds + 1, last_round_at=now,
                reviewed_until=ready[-1][0])  # fmt: skip
    return s, (s, "round", f"round {s.total}: {len(ready)} run(s) to review")


def _act(client: redis.Redis, config: Config, outcome: Outcome, ready: Ready) -> str:
    state, action, detail = outcome
    if action == "round":
        by_session: dict[str, list[dict[str, str]]] = {}
        for _, run in reversed(ready):  # newest first
            by_session.setdefault(run.get("session_key", ""), []).append(run)
        client.delete(k.history_key(SESSION_KEY))  # each review starts afresh: no old digests
        submit(client, config, InboundMessage(
            message_id=f"{_prefix(state)}{state.total}", channel=CHANNEL, chat_id="main",
            session_key=SESSION_KEY, sender_id=CHANNEL,
            text=ROUND_TEXT.format(n=state.total, digest=digest(client, by_session)),
            metadata={"origin": Origin.AUTOLEARN.value},
        ))  # fmt: skip
    elif action == "stop":
        chat = (Chat(state.channel, state.chat_id, state.session_key) if state.channel
                else last_active(client.get(k.LAST_ACTIVE)))  # fmt: skip
        if chat is not None:
            notify(client, chat,
                   f"Auto-learning stopped: {detail}. Say \"start auto-learning\" to start it "
                   "again.", message_id=f"{_prefix(state)}stopped", origin=CHANNEL)  # fmt: skip
    return f"autolearn {action}: {detail}"
