"""One agent turn: history → context → model/tool loop → save → reply.

An ``Agent`` is shared by every worker thread of a process, so it keeps no per-turn state:
everything about a turn lives in ``handle``'s locals and in the ``_Turn`` it builds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import redis

from claw_worker.agent.compaction import compact_history
from claw_worker.agent.context import (
    build_messages,
    build_system_prompt,
    memory_recall,
    user_message,
)
from claw_worker.agent.history import LOAD_LIMIT, MAX_ENTRIES, History
from claw_worker.agent.shrink import go_on_cutting
from claw_worker.config.paths import workspace_dir
from claw_worker.config.schema import Config
from claw_worker.constants import lang_key
from claw_worker.contract import InboundMessage, Origin
from claw_worker.providers.base import ChatProvider, ContextTooLong, LLMResponse, ToolCall
from claw_worker.providers.registry import build_provider, resolve_model
from claw_worker.quotas import TokenBudget
from claw_worker.tools.base import ToolContext
from claw_worker.tools.registry import ToolRegistry, default_tools
from claw_worker.workspace import make_workspace

Message = dict[str, Any]
T = TypeVar("T")
CANCELLED_TOOL_RESULT = "Error: not run, the user asked to stop."
# The answer ended at max_tokens while writing this call (finish_reason "length"): its
# arguments are incomplete. Said as such, or the model reads "not valid JSON", takes it for
# a typo and writes the same oversized call again until max_tool_iterations.
CUT_OFF_TOOL_RESULT = (
    "Error: not run: your answer was cut off at the output-token limit (max_tokens %d) "
    "while writing this call, so its arguments are incomplete. Write smaller pieces: split "
    "large content over several smaller calls (e.g. write a first part, then add the rest "
    "in further calls), each well under the limit."
)
# Past runtime_control.tool_max_calls_per_answer in one answer: said, so the model asks again.
OVER_CAP_TOOL_RESULT = (
    "Error: not run: one answer may ask for at most %d tool calls "
    "(runtime_control.tool_max_calls_per_answer) and this was call %d of %d; read the "
    "results of the first ones, then ask for the rest in your next answer."
)


@dataclass(frozen=True)
class AgentReply:
    text: str
    tool_steps: int = 0  # tool calls run
    llm_calls: int = 0
    cancelled: bool = False  # should_stop ended the turn early; text is then ""
    exhausted: bool = False  # max_tool_iterations reached without a final answer
    over_budget: bool = False  # the daily token budget stopped it (quotas.py); text says so
    usage: dict[str, int] = field(default_factory=dict)
    transcript_length: int | None = None  # the session history's messages after the turn


def _never() -> bool:
    return False


# LLM calls run here so the run's own thread can give up on one the moment /stop arrives;
# the abandoned request finishes (or times out) in the background and is discarded.
_llm_calls = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="llm-call")
# Parallel-safe tool calls of every turn in the process share this pool; each turn keeps at
# most runtime_control.tool_max_parallel_calls of its own in flight.
_tool_calls = ThreadPoolExecutor(max_workers=256, thread_name_prefix="tool-call")
STOP_POLL_SEC = 0.05
MINIMAL_HISTORY = 6  # messages a heartbeat turn sees of its own session


def abandonable(call: Callable[[], T], stop: Callable[[], bool]) -> T | None:
    """``call()``'s result, or None as soon as ``stop()`` turns true (exceptions propagate)."""
    if stop is _never:
        return call()
    future = _llm_calls.submit(call)
    while True:
        try:
            return future.result(timeout=STOP_POLL_SEC)
        except FuturesTimeout:
            if stop():
                future.cancel()
                return None


@dataclass
class _Turn:
    """The running state of one turn: what is sent next, and what gets saved."""

    messages: list[Message]
    new: list[Message]  # appended to history at the end
    tool_steps: int = 0
    llm_calls: int = 0
    usage: dict[str, int] = field(default_factory=dict)

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self.new.append(message)

    def rebase(self, start: list[Message]) -> None:
        """Send ``start`` (system, history, the user's message) then this turn's messages
        after the user's so far: the turn continues on a history compacted under it."""
        self.messages = [*start, *self.new[1:]]

    def count(self, response: LLMResponse) -> None:
        self.llm_calls += 1
        for key, value in response.usage.items():
            self.usage[key] = self.usage.get(key, 0) + value


class Agent:
    def __init__(
        self,
        config: Config,
        redis: redis.Redis,
        *,
        provider: ChatProvider | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        # One provider (keep-alive connections) for every thread of the process.
        self.provider = provider if provider is not None else build_provider(config, redis)
        self.tools = tools if tools is not None else default_tools(config)
        self.model = resolve_model(config)
        self.workspace = workspace_dir(config)
        # Sessions this process has run a turn for: the first compaction of a session after
        # a (re)start is reported with the startup note.
        self._seen_sessions: set[str] = set()
        self._seen_lock = threading.Lock()

    def _first_turn_since_start(self, session_key: str) -> bool:
        with self._seen_lock:
            if session_key in self._seen_sessions:
                return False
            self._seen_sessions.add(session_key)
            return True

    def handle(
        self, message: InboundMessage, *, should_stop: Callable[[], bool] | None = None
    ) -> AgentReply:
        defaults = self.config.agents.defaults
        provider = self.provider
        if provider is None:
            return AgentReply(text=defaults.texts.provider_not_configured)
        stop = should_stop or _never
        # Checked before anything calls the LLM (compaction included) and before each call.
        budget = TokenBudget(self.redis, self.config, message)
        refusal = budget.refusal()
        if refusal is not None:
            return AgentReply(text=refusal, over_budget=True)
        make_workspace(self.workspace)

        # A heartbeat looks at HEARTBEAT.md with minimal context: no memory recall and only
        # the last few messages of its own session, so a check costs a few hundred tokens.
        # Its session keeps no more than that, and is not compacted as it grows: a summary of
        # turns it does not read would be an LLM call (and memory facts) for nothing (only a
        # "context too long" answer still forces a compaction).
        minimal = message.origin is Origin.HEARTBEAT
        history = History(self.redis, message.session_key,
                          max_entries=MINIMAL_HISTORY if minimal else MAX_ENTRIES)  # fmt: skip
        if not minimal:
            # Before loading: an over-long history is summarised first (a failure keeps it).
            compact_history(
                self.config, provider, self.model, history, self.workspace,
                startup=self._first_turn_since_start(message.session_key), spend=budget.spend,
            )  # fmt: skip
        recall = "" if minimal else memory_recall(self.workspace, message.text, defaults)
        language = self.redis.get(lang_key(message.session_key))
        system_prompt = build_system_prompt(
            self.workspace, message, memory=recall, language=language or ""
        )
        user = user_message(message)
        past_limit = MINIMAL_HISTORY if minimal else LOAD_LIMIT
        turn = _Turn(build_messages(system_prompt, history.load(past_limit), user), new=[user])
        ctx = ToolContext(
            self.workspace,
            message.session_key,
            self.config,
            should_stop=stop,
            redis=self.redis,
            message_id=message.message_id,
            origin=message.origin.value,
            started_by=message.started_by.value,
            sender=budget.carried_sender,
        )

        run = partial(self._loop, provider, turn, ctx, stop, budget)
        try:
            reply = run()
        except ContextTooLong as refused:
            # The provider's window is smaller than our thresholds assumed: compact whatever
            # the thresholds say, then go on; if this turn's own tool results are what is
            # too long (compaction cannot shrink them), they are cut (shrink.py).
            compacted = compact_history(
                self.config,
                provider,
                self.model,
                history,
                self.workspace,
                force=True,
                spend=budget.spend,
            )
            if compacted is not None:
                # The turn goes on where it was refused: the tool calls it already ran, and
                # their results, follow the compacted history, so none of them runs twice.
                turn.rebase(build_messages(system_prompt, history.load(past_limit), user))
            reply = go_on_cutting(run, turn.new, refused, retry_first=compacted is not None)
        # Saved only once the turn is over: a ProviderError propagates before this, and the
        # retried message then starts from the same history instead of a duplicate user turn;
        # once per message id, for a message re-run after its worker died right after this.
        history.append(turn.new, message_id=message.message_id)
        return replace(reply, transcript_length=history.length)

    def _loop(
        self,
        provider: ChatProvider,
        turn: _Turn,
        ctx: ToolContext,
        stop: Callable[[], bool],
        budget: TokenBudget,
    ) -> AgentReply:
        defaults = self.config.agents.defaults
        schemas = self.tools.schemas()
        # Counted by the turn's model answers, not per call of this method: a turn continued
        # after a forced compaction keeps the iterations it already used.
        while turn.llm_calls < defaults.max_tool_iterations:
            if stop():
                return self._reply(turn, "", cancelled=True)
            refusal = budget.refusal()
            if refusal is not None:  # used up during this run: stop before the next call
                turn.add({"role": "assistant", "content": refusal})
                return self._reply(turn, refusal, over_budget=True)
            max_tokens = budget.cap(defaults.max_tokens)
            response = abandonable(
                partial(
                    provider.chat,
                    turn.messages,
                    schemas,
                    model=self.model,
                    max_tokens=max_tokens,
                    temperature=defaults.temperature,
                ),
                stop,
            )
            if response is None:
                return self._reply(turn, "", cancelled=True)
            turn.count(response)
            budget.spend(response.usage)
            if not response.tool_calls:
                text = response.content.strip() or defaults.texts.no_response_fallback
                turn.add({"role": "assistant", "content": text})
                return self._reply(turn, text)
            turn.add(
                {
                    "role": "assistant",
                    "content": response.content or None,
                    "tool_calls": [call.to_message() for call in response.tool_calls],
                }
            )
            held = self._held_back(response, max_tokens)
            if not self._run_tools(turn, response.tool_calls, held, ctx, stop):
                return self._reply(turn, "", cancelled=True)
        text = defaults.texts.tool_iterations_exhausted % defaults.max_tool_iterations
        turn.add({"role": "assistant", "content": text})
        return self._reply(turn, text, exhausted=True)

    def _held_back(self, response: LLMResponse, max_tokens: int) -> dict[int, str]:
        """The calls of ``response`` not to run, by index, each with the result saying why:
        those past the per-answer cap, and the last one when the output limit cut it."""
        calls = response.tool_calls
        cap = self.config.agents.defaults.runtime_control.tool_max_calls_per_answer
        held = {i: OVER_CAP_TOOL_RESULT % (cap, i + 1, len(calls)) for i in range(cap, len(calls))}
        if response.finish_reason == "length":  # cut off: its result says so, past the cap too
            held[len(calls) - 1] = CUT_OFF_TOOL_RESULT % max_tokens
        return held

    def _run_tools(
        self,
        turn: _Turn,
        calls: list[ToolCall],
        held: dict[int, str],
        ctx: ToolContext,
        stop: Callable[[], bool],
    ) -> bool:
        """Run the calls but those ``held`` (by index: the result saying why not); False
        if stopped. Calls to tools named in
        ``runtime_control.tool_parallel_safe_names`` run side by side (at most
        ``tool_max_parallel_calls`` at once); any other call waits for those and runs alone.
        Results are added in the calls' order, and every call gets one, because the API
        rejects an assistant tool call without its answer in the history."""
        control = self.config.agents.defaults.runtime_control
        safe = set(control.tool_parallel_safe_names)
        width = control.tool_max_parallel_calls
        results = [held.get(index, CANCELLED_TOOL_RESULT) for index in range(len(calls))]
        running: dict[int, Future[str]] = {}  # call index -> its result, in flight

        def settle(keep: int) -> None:
            """Wait until at most ``keep`` calls are in flight, collecting the finished."""
            while len(running) > keep:
                done, _ = wait(running.values(), return_when=FIRST_COMPLETED)
                for index in [i for i, future in running.items() if future in done]:
                    results[index] = running.pop(index).result()

        stopped = False
        for index, call in enumerate(calls):
            if index in held:
                continue
            parallel = width > 1 and call.name in safe
            settle(width - 1 if parallel else 0)
            stopped = stopped or stop()
            if stopped:
                break  # the rest keep CANCELLED_TOOL_RESULT; calls in flight still finish
            turn.tool_steps += 1
            if parallel:
                running[index] = _tool_calls.submit(
                    self.tools.run, call.name, call.raw_arguments, ctx
                )
            else:
                results[index] = self.tools.run(call.name, call.raw_arguments, ctx)
        settle(0)
        for call, result in zip(calls, results, strict=True):
            turn.add({"role": "tool", "tool_call_id": call.id, "content": result})
        return not stopped

    @staticmethod
    def _reply(
        turn: _Turn,
        text: str,
        *,
        cancelled: bool = False,
        exhausted: bool = False,
        over_budget: bool = False,
    ) -> AgentReply:
        return AgentReply(
            text=text,
            tool_steps=turn.tool_steps,
            llm_calls=turn.llm_calls,
            cancelled=cancelled,
            exhausted=exhausted,
            over_budget=over_budget,
            usage=dict(turn.usage),
        )
