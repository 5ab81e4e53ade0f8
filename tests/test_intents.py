"""Natural-language intents (``claw_worker/commands/intents.py``): the word prefilter that lets
most messages skip the patterns never changes what the patterns find (hypothesis, over texts
built from the words the patterns look for, in any case, among other words)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from claw_worker.commands.intents import _INTENTS, match_intent
from claw_worker.config import Config

CONFIG = Config()
FRAGMENTS = [
    "start", "stop", "enable", "turn off", "the", "autonomous", "autonomy", "mode",
    "auto-learning", "autolearn", "auto learn", "every", "30", "minutes", "tell me",
    "notify me", "let me know", "wait", "when", "run-17-42", "latest", "finishes", "done",
    "show", "what's", "what is", "status of", "last run", "latest run", "please", "ok",
    "开始", "停止", "自主模式", "自动学习", "每", "分钟", "等待", "完成", "看看", "最新", "run",
    "hello", ",", "!", " ", "\n",
]  # fmt: skip
MIXED_CASE = st.sampled_from(FRAGMENTS).flatmap(
    lambda word: st.sampled_from([word, word.upper(), word.title(), word.swapcase()])
)


def patterns_alone(text: str) -> tuple[str, list[str]] | None:
    """What match_intent answers without its prefilter: the first pattern that matches."""
    for pattern, to_args in _INTENTS:
        found = pattern.search(text)
        if found:
            args = to_args(found)
            return (args[0], args[1:]) if args and args[0][0] == "/" else ("/status", args)
    return None


@settings(max_examples=400, deadline=None)
@given(st.lists(MIXED_CASE, max_size=12).map(" ".join))
def test_the_prefilter_never_hides_a_match(text: str) -> None:
    assert match_intent(text, CONFIG) == patterns_alone(text)


def test_ordinary_messages_and_requests() -> None:
    assert match_intent("hello, how are you today?", CONFIG) is None
    assert match_intent("Start Autonomous mode, check every 30 minutes", CONFIG) == (
        "/autonomy", ["on", "every", "30", "minutes"],
    )  # fmt: skip
    assert match_intent("stop AUTO-LEARNING", CONFIG) == ("/autolearn", ["off"])
    assert match_intent("WHAT'S the latest run?", CONFIG) == ("/status", ["run", "latest"])
    assert match_intent("看看最新的run", CONFIG) == ("/status", ["run", "latest"])
