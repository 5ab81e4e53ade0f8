"""Context compaction: when a session's history grows past its limits, older messages are
replaced by a summary so every turn's context stays bounded.

Modes (``agents.defaults.context_compaction.mode``):

- ``summary``: the LLM writes a readable summary and the durable facts (one call);
- ``responses_compact``: the Responses API's ``/responses/compact`` turns the older messages
  into an opaque compaction item the model reads back with full fidelity; one short LLM call
  still pulls out the durable facts for memory;
- ``hybrid``: both, so the current proxy gets the compaction item and any fallback proxy
  (which cannot read it) still has the readable summary.

The native modes need ``providers.proxy`` to say ``protocol=responses`` and
``supports_responses_compact=true``; otherwise they run as ``summary`` (logged).

Runs at the start of a turn (the session lease makes this worker the history's only
writer). Order matters for never losing anything: summarise, then write the durable facts
to memory, then swap the Redis list in one MULTI. Any failure before the swap leaves the
history as it was, and the next turn tries again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claw_worker.agent.history import History
from claw_worker.config.schema import Config
from claw_worker.memory import store
from claw_worker.providers.base import COMPACTION, ChatProvider

log = logging.getLogger(__name__)

Message = dict[str, Any]
PER_MESSAGE_CHARS = 2000  # of one message in the summariser's transcript
TRANSCRIPT_CAP = 60_000  # the summariser's input; beyond it the oldest part is cut
SUMMARY_PROMPT = """You compact a conversation between a user and an AI agent so it can \
continue with less context. Write:

SUMMARY:
what was asked, done and decided, open tasks and anything needed to carry on; at most \
%d characters; plain text.

FACTS:
durable facts worth keeping long-term (user preferences, decisions, names, paths, \
procedures), one per line starting with "- "; write "- none" if there are none."""
FACTS_PROMPT = """You read a conversation between a user and an AI agent before its older \
part is compacted. List the durable facts worth keeping long-term (user preferences, \
decisions, names, paths, procedures) under

FACTS:

one per line starting with "- "; write "- none" if there are none."""
_FACTS = re.compile(r"^[ \t*#]*FACTS[ \t*]*:", re.IGNORECASE | re.MULTILINE)
_SUMMARY = re.compile(r"^[ \t*#]*SUMMARY[ \t*]*:[ \t*]*", re.IGNORECASE)


@dataclass(frozen=True)
class Compaction:
    removed: int  # messages replaced by the summary
    kept: int  # recent messages kept verbatim
    facts: int  # facts appended to today's memory note
    mode: str  # "summary", "responses_compact" or "hybrid"


def message_chars(message: Message) -> int:
    size = len(str(message.get("content") or ""))
    if message.get("tool_calls"):
        size += len(json.dumps(message["tool_calls"], ensure_ascii=False))
    return size


def needs_compaction(messages: Sequence[Message], config: Config) -> bool:
    cfg = config.agents.defaults.context_compaction
    if not cfg.enabled or len(messages) <= 2:
        return False
    return (
        len(messages) > cfg.trigger_messages
        or sum(message_chars(m) for m in messages) > cfg.max_transcript_chars
    )


def split_point(messages: Sequence[Message], keep: int) -> int:
    """Where the verbatim tail starts: at least ``keep`` messages, and never between an
    assistant tool call and its results. A user message is preferred (a clean turn start);
    failing that, any message that is not a tool result."""
    start = 1 if messages and messages[0].get("role") == "system" else 0  # old summary
    cut = max(start, len(messages) - keep)
    for index in range(cut, start, -1):
        if messages[index].get("role") == "user":
            return index
    while cut > start and messages[cut].get("role") == "tool":
        cut -= 1
    return cut


def _nothing_to_fold(old: Sequence[Message]) -> bool:
    """Whether ``old`` holds nothing beyond the previous summary."""
    return not old or (len(old) == 1 and old[0].get("role") == "system")


def transcript(messages: Sequence[Message]) -> str:
    lines = []
    for m in messages:
        role = str(m.get("role", "?")).upper()
        content = str(m.get("content") or "")
        if role == "SYSTEM":
            role = "EARLIER SUMMARY"
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            content += f"\n[calls {fn.get('name')}({fn.get('arguments', '')})]"
        if len(content) > PER_MESSAGE_CHARS:
            content = content[:PER_MESSAGE_CHARS] + " …[cut]"
        lines.append(f"{role}: {content.strip()}")
    text = "\n\n".join(lines)
    return text if len(text) <= TRANSCRIPT_CAP else "…[earlier part cut]\n" + text[-TRANSCRIPT_CAP:]


def parse_summary(text: str, max_chars: int) -> tuple[str, list[str]]:
    """(summary, facts) from the summariser's answer."""
    parts = _FACTS.split(text, maxsplit=1)
    summary = _SUMMARY.sub("", parts[0].strip(), count=1).strip()
    if len(summary) > max_chars:
        summary = summary[: max_chars - 1].rstrip() + "…"
    return summary, parse_facts(parts[1] if len(parts) > 1 else "")


def parse_facts(text: str) -> list[str]:
    """One fact per line of ``text`` (after a FACTS: heading, when there is one)."""
    parts = _FACTS.split(text, maxsplit=1)
    facts: list[str] = []
    for line in parts[-1].splitlines():
        fact = line.strip().lstrip("-*•").strip()
        if fact and fact.strip("().").lower() not in {"none", "n/a", "no facts"}:
            facts.append(fact)
    return facts


def effective_mode(config: Config, provider: ChatProvider) -> str:
    """The mode this compaction runs in: a native mode needs a current proxy that offers it;
    otherwise ``summary``, and the reason is logged."""
    mode = config.agents.defaults.context_compaction.mode
    if mode == "summary":
        return mode
    proxy = config.providers.proxy
    if proxy.protocol != "responses" or not proxy.supports_responses_compact:
        why = "the proxy is not protocol=responses with supports_responses_compact=true"
    elif not getattr(provider, "can_compact", False):
        why = "the provider offers no native compaction"
    else:
        return mode
    log.log(
        logging.INFO if mode == "responses_compact" else logging.DEBUG,
        "context compaction mode %s: %s; using summary",
        mode,
        why,
    )
    return "summary"


Spend = Callable[[dict[str, int]], None]  # takes one LLM call's usage (quotas.TokenBudget)


def _summarise(
    config: Config,
    provider: ChatProvider,
    model: str,
    old: Sequence[Message],
    mode: str,
    spend: Spend | None = None,
) -> tuple[str, list[str], dict[str, Any] | None]:
    """(summary, facts, native compaction) for ``old``; raises when any part fails. The
    summary call's usage goes to ``spend`` (the native compact call reports none)."""
    defaults = config.agents.defaults
    cfg = defaults.context_compaction
    native = None
    if mode != "summary":
        native = provider.compact(old, model)  # type: ignore[attr-defined]
    prompt = FACTS_PROMPT if mode == "responses_compact" else SUMMARY_PROMPT % cfg.max_summary_chars
    request = [{"role": "system", "content": prompt}, {"role": "user", "content": transcript(old)}]
    answer = provider.chat(
        request, None, model=model, max_tokens=defaults.max_tokens, temperature=0.2
    )
    if spend is not None:  # counted before parsing: a bad answer cost tokens all the same
        spend(answer.usage)
    if mode == "responses_compact":  # the facts call: the compaction item is the summary
        return "", parse_facts(answer.content or ""), native
    summary, facts = parse_summary(answer.content or "", cfg.max_summary_chars)
    if not summary:
        raise ValueError("the summariser returned an empty summary")
    return summary, facts, native


def compact_history(
    config: Config,
    provider: ChatProvider,
    model: str,
    history: History,
    workspace: Path,
    *,
    force: bool = False,
    startup: bool = False,
    spend: Spend | None = None,
) -> Compaction | None:
    """Compact ``history`` if it is over its limits (or ``force``: the provider said the
    context is too long); None when not needed or it failed. ``spend`` takes the summary
    call's usage (the run's token budget, claw_worker/quotas.py)."""
    defaults = config.agents.defaults
    cfg = defaults.context_compaction
    if not cfg.enabled and not force:
        return None  # and skip reading the whole history (half a turn's framework time)
    messages, raw_len = history.load_all()
    if not force and not needs_compaction(messages, config):
        return None
    cut = split_point(messages, cfg.keep_recent_messages)
    if _nothing_to_fold(messages[:cut]):
        # Fewer messages than keep_recent_messages, yet over max_transcript_chars or refused
        # by the provider (large tool outputs, a small context window): keep only the last
        # turn (or its last message). Keeping them all left a session the provider refused
        # on every message, since a refused turn is never saved to change the history.
        cut = split_point(messages, 1)
    old, recent = messages[:cut], messages[cut:]
    if _nothing_to_fold(old):
        return None
    mode = effective_mode(config, provider)
    try:
        summary, facts, native = _summarise(config, provider, model, old, mode, spend)
    except Exception as exc:  # a provider outage or bad answer must not fail the turn
        log.warning("context compaction failed (%s); history kept, retried next turn", exc)
        return None
    if facts:
        # Written before the old messages go: the facts must outlive the summary.
        body = "Facts from a compacted conversation:\n" + "\n".join(f"- {f}" for f in facts)
        try:
            store.append(workspace, "note", body)
        except (ValueError, OSError) as exc:
            # A note that cannot be written (a FIFO or a link in its place, over the size
            # cap) failed every compaction of the day, and the history only grew: the
            # facts stay in the summary instead.
            log.warning("compaction facts not saved to memory (%s); kept in the summary", exc)
            summary = f"{summary}\n\n{body}".strip()
    removed = len(old) - (1 if old[0].get("role") == "system" else 0)
    # The first compaction of a session in a freshly started worker says so (ClawGo's
    # startup compaction); later ones are runtime compactions.
    template = (
        defaults.texts.startup_compaction_note
        if startup
        else defaults.texts.runtime_compaction_note
    )
    note = template % (removed, len(recent))
    head: Message = {"role": "system", "content": f"{note}\n\n{summary}".strip()}
    if native is not None:
        head[COMPACTION] = native
    if not history.replace([head, *recent], expect_len=raw_len):
        log.info("history changed during compaction; retried next turn")
        return None
    log.info("compacted history: removed %d, kept %d, %d facts (%s)", removed, len(recent),
             len(facts), mode)  # fmt: skip
    return Compaction(removed, len(recent), len(facts), mode)
