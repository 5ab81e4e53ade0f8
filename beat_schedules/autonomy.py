"""Autonomous mode: rounds of work in a user's chat while the user is away.

Switched with ``/autonomy`` (or "start autonomous mode, check every 30 minutes") and
``clawctl gateway autonomy``; its state is the hash ``constants.AUTONOMY``
(``claw_worker/autonomy_state.py``). ``tick`` runs every
``runtime_control.autonomy_tick_interval_sec`` and does nothing while the mode is off:

- a user message in the chat since the last look (LAST_ACTIVE names the chat, or the
  session's newest run is neither a round nor the answer to a sub-agent's report) resets the rounds without the user and the stalls;
- while a round is queued or running, each ``autonomy_max_pending_duration_sec`` it has
  waited counts as a stall;
- otherwise, once ``max(autonomy_min_run_interval_sec, the asked interval)`` has passed
  since the last round, the user has been away ``autonomy_idle_threshold_sec`` and the
  session is not busy, a round is submitted: a message (origin ``autonomy``) into the
  user's own session, so the agent continues the conversation's work with its history, and
  its report goes to the chat (a bare ``AUTONOMY_IDLE`` is not delivered).

``record_round`` (called by the worker when a round finished): a round that failed, was
stopped or replied ``AUTONOMY_IDLE`` is a stall; any other resets the stalls.
``autonomy_max_consecutive_stalls`` stalls in a row, or
``autonomy_max_rounds_without_user`` rounds, stop the mode, and the chat is told why.
Auto-learning shares the tick and the hook: ``autolearn.py``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import redis

from beat_schedules import autolearn
from beat_schedules.selfcheck import CONTINUE_PREFIX
from claw_worker import constants as k
from claw_worker.autonomy_state import (
    IDLE_WORD,
    Autonomy,
    change,
    human,
    last_active,
    notify,
)
from claw_worker.config import Config
from claw_worker.contract import InboundMessage, MessageStatus, Origin
from claw_worker.session.mailbox import Mailbox
from claw_worker.session.submit import submit
from claw_worker.work.origin import ANNOUNCE_PREFIX

if TYPE_CHECKING:
    from claw_worker.config.schema import RuntimeControlConfig

ROUND_PREFIX = "autonomy-"  # message ids of rounds: autonomy-<start ms>-<n>
# Runs in the chat's session nobody wrote: rounds, answers to reports, start-up continuations.
NOT_USER = (ROUND_PREFIX, ANNOUNCE_PREFIX, CONTINUE_PREFIX)
ROUND_TEXT = (
    "[autonomy round {n}] Autonomous mode: the user is away. Continue the unfinished work of "
    "this conversation on your own: take the next useful step with your tools, then report "
    "briefly what you did. Do not ask the user anything. If nothing is left to do, or you "
    f"cannot go on without the user, reply only {IDLE_WORD}."
)
QUIET_ACK = len(IDLE_WORD) + 3  # "AUTONOMY_IDLE" (with a dot or so) is not delivered
Outcome = tuple[Autonomy, str, str]  # the state written, the action, why


def tick(client: redis.Redis, config: Config) -> str:
    now = time.time()
    parts = [_tick(client, config, now), autolearn.tick(client, config, now)]
    return "; ".join(part for part in parts if part)


def record_round(
    client: redis.Redis, config: Config, message: InboundMessage, status: MessageStatus, text: str
) -> None:
    if message.origin is Origin.AUTOLEARN:
        autolearn.record(client, config, message, status, text)
        return
    current = Autonomy.from_hash(client.hgetall(k.AUTONOMY))
    if current.pending_id != message.message_id:
        return  # a round of an earlier start
    control, now = config.agents.defaults.runtime_control, time.time()
    seen = user_activity(client, current)
    outcome = change(
        client,
        Autonomy,
        lambda s: _finished(s, control, now, seen, message.message_id, status, text),
    )
    _act(client, config, outcome)


def user_activity(client: redis.Redis, state: Autonomy) -> float:
    """When the user last wrote in the chat, as far as can be told (0: not known)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.get(k.LAST_ACTIVE)
        pipe.get(k.latest_run_key(state.session_key))
        raw, latest = pipe.execute()
    chat = last_active(raw)
    seen = chat.at if chat is not None and chat.session_key == state.session_key else 0.0
    if latest:
        message_id, queued = client.hmget(k.run_key(latest), "message_id", "queued_at")
        if message_id and not message_id.startswith(NOT_USER) and queued:
            seen = max(seen, float(queued))
    return seen


def _tick(client: redis.Redis, config: Config, now: float) -> str:
    state = Autonomy.from_hash(client.hgetall(k.AUTONOMY))
    if not state.enabled:
        return "autonomy off"
    control = config.agents.defaults.runtime_control
    seen = user_activity(client, state)
    busy = any(Mailbox(client).probe(state.session_key))
    outcome = change(client, Autonomy,
                     lambda s: _decide(s, control, now, seen, busy, state.started_at))  # fmt: skip
    return _act(client, config, outcome)


def _saw_user(state: Autonomy, seen: float) -> Autonomy:
    if seen <= state.user_seen_at:
        return state
    return replace(state, user_seen_at=seen, rounds_without_user=0, consecutive_stalls=0)


def _limit(state: Autonomy, control: RuntimeControlConfig, *, rounds: bool = True) -> str:
    """Why the mode must stop now, or ""."""
    stalls, max_stalls = state.consecutive_stalls, control.autonomy_max_consecutive_stalls
    if stalls >= max_stalls:
        return (f"{stalls} round(s) in a row made no progress ({state.last_stall}; "
                f"runtime_control.autonomy_max_consecutive_stalls is {max_stalls})")  # fmt: skip
    max_rounds = control.autonomy_max_rounds_without_user
    if rounds and state.rounds_without_user >= max_rounds:
        return (f"{state.rounds_without_user} round(s) without hearing from you "
                f"(runtime_control.autonomy_max_rounds_without_user is {max_rounds})")  # fmt: skip
    return ""


def _stop(state: Autonomy, now: float, reason: str) -> tuple[Autonomy, Outcome]:
    stopped = state.stop(reason, now)
    return stopped, (stopped, "stop", reason)


def _decide(
    s: Autonomy, control: RuntimeControlConfig, now: float, seen: float, busy: bool,
    started_at: float,
) -> tuple[Autonomy, Outcome]:  # fmt: skip
    if not s.enabled or s.started_at != started_at:  # switched meanwhile: look next tick
        return s, (s, "wait", "switched meanwhile")
    s = _saw_user(s, seen)
    if s.pending_id:
        waited, limit = now - s.pending_at, control.autonomy_max_pending_duration_sec
        overdue = int(waited // limit)
        if overdue > s.pending_stalls:
            s = replace(
                s,
                consecutive_stalls=s.consecutive_stalls + overdue - s.pending_stalls,
                pending_stalls=overdue,
                last_stall=f"round {s.rounds} waited {human(waited)} to finish, "
                f"more than autonomy_max_pending_duration_sec ({limit})",
            )
        reason = _limit(s, control, rounds=False)  # the rounds limit: once it has finished
        if reason:
            return _stop(s, now, reason)
        return s, (s, "wait", f"round {s.rounds} queued or running for {human(waited)}")
    reason = _limit(s, control)
    if reason:
        return _stop(s, now, reason)
    every = max(control.autonomy_min_run_interval_sec, s.interval_sec)
    if now - s.last_round_at < every:
        return s, (s, "wait", f"next round in {human(every - (now - s.last_round_at))}")
    away = now - max(seen, s.user_seen_at)
    if away < control.autonomy_idle_threshold_sec:
        return s, (s, "wait", f"the user was active {human(away)} ago")
    if busy:
        return s, (s, "wait", "the session is busy")
    n = s.rounds + 1
    s = replace(s, rounds=n, rounds_without_user=s.rounds_without_user + 1, last_round_at=now,
                pending_id=f"{ROUND_PREFIX}{int(s.started_at * 1000)}-{n}", pending_at=now,
                pending_stalls=0)  # fmt: skip
    return s, (s, "round", f"round {n} for {s.chat().label()}")


def _finished(
    s: Autonomy, control: RuntimeControlConfig, now: float, seen: float, message_id: str,
    status: MessageStatus, text: str,
) -> tuple[Autonomy, Outcome]:  # fmt: skip
    if not s.enabled or s.pending_id != message_id:
        return s, (s, "ignored", "not the pending round")
    s = _saw_user(replace(s, pending_id="", pending_at=0.0, pending_stalls=0), seen)
    reply = " ".join(text.split())
    if status is MessageStatus.DONE and not reply.upper().startswith(IDLE_WORD):
        s = replace(s, consecutive_stalls=0)
    else:
        how = (
            f"replied {IDLE_WORD}"
            if status is MessageStatus.DONE
            else f"{status.value}: {reply[:160]}"
        )
        s = replace(s, consecutive_stalls=s.consecutive_stalls + 1,
                    last_stall=f"round {s.rounds} {how}")  # fmt: skip
    reason = _limit(s, control)
    if reason:
        return _stop(s, now, reason)
    return s, (s, "finished", f"round {s.rounds} {status.value}")


def _act(client: redis.Redis, config: Config, outcome: Outcome) -> str:
    state, action, detail = outcome
    if action == "round":
        submit(client, config, InboundMessage(
            message_id=state.pending_id, channel=state.channel, chat_id=state.chat_id,
            session_key=state.session_key, sender_id=Origin.AUTONOMY.value,
            text=ROUND_TEXT.format(n=state.rounds),
            metadata={"origin": Origin.AUTONOMY.value, "quiet_ack": QUIET_ACK},
        ))  # fmt: skip
    elif action == "stop":
        notify(client, state.chat(),
               f"Autonomous mode stopped: {detail}. Say \"start autonomous mode\" (or "
               "/autonomy on) to start it again.",
               message_id=f"{ROUND_PREFIX}{int(state.started_at * 1000)}-stopped",
               origin=Origin.AUTONOMY.value)  # fmt: skip
    return f"autonomy {action}: {detail}"
