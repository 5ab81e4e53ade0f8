"""Natural-language requests mapped onto slash commands ("show the latest run", "tell me when
run-… finishes", "start autonomous mode, check every 30 minutes", and their Chinese forms)."""

from __future__ import annotations

import re
from collections.abc import Callable

from claw_worker.config import Config

_RUN_ID = r"(run-\d+-\d+|latest)"
# Autonomy and auto-learning, asked for at the start of a message ("start autonomous mode,
# check every 30 minutes", "stop auto-learning", "开始自主模式，每30分钟检查一次").
_LEAD = r"^\W*(?:(?:please|pls|ok|okay|now|can you|could you)\W+)*"
_ON = r"(?:start|enable|turn on|switch on|begin|enter|resume|go into)\s+(?:the\s+)?"
_OFF = r"(?:stop|disable|turn off|switch off|end|exit|leave|quit|pause)\s+(?:the\s+)?"
_EVERY = r"(?:.*?\b(?:every|each)\s*(?P<n>\d{1,7})\s*(?P<unit>[a-z]+))?"
_ZH_ON = r"^\W*请?(?:开始|开启|启动|进入|打开)\s*"
_ZH_OFF = r"^\W*请?(?:停止|关闭|退出|结束|停掉|暂停)\s*"
_ZH_EVERY = r"(?:.*?每隔?\s*(?P<n>\d{1,7})\s*(?P<unit>秒钟?|分钟?|个?小时|钟头))?"
_AUTONOMY, _LEARN = r"autonom(?:ous|y)(?:\s+mode)?\b", r"auto[- ]?learn(?:ing)?\b"


def _switch(name: str, on: bool) -> Callable[[re.Match[str]], list[str]]:
    def to_args(found: re.Match[str]) -> list[str]:
        if not on:
            return [name, "off"]
        every = ["every", found["n"], found["unit"]] if found["n"] else []
        return [name, "on", *every]

    return to_args


_INTENTS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]] = [
    (re.compile(_LEAD + _ON + _AUTONOMY + _EVERY, re.I), _switch("/autonomy", True)),
    (re.compile(_LEAD + _OFF + _AUTONOMY, re.I), _switch("/autonomy", False)),
    (re.compile(_LEAD + _ON + _LEARN + _EVERY, re.I), _switch("/autolearn", True)),
    (re.compile(_LEAD + _OFF + _LEARN, re.I), _switch("/autolearn", False)),
    (re.compile(_ZH_ON + "自主模式" + _ZH_EVERY), _switch("/autonomy", True)),
    (re.compile(_ZH_OFF + "自主模式"), _switch("/autonomy", False)),
    (re.compile(_ZH_ON + "自动学习" + _ZH_EVERY), _switch("/autolearn", True)),
    (re.compile(_ZH_OFF + "自动学习"), _switch("/autolearn", False)),
    (
        re.compile(
            rf"(tell me|notify me|let me know|wait)\b.*?\b{_RUN_ID}?.*(finish|done|complete)", re.I
        ),
        lambda m: ["wait", m.group(2) or "latest"],
    ),
    (re.compile(rf"等待?\s*{_RUN_ID}?.*完成"), lambda m: ["wait", m.group(1) or "latest"]),
    (
        re.compile(rf"(show|what('s| is)|status of)\b.*\b(latest run|last run|{_RUN_ID})", re.I),
        lambda m: ["run", m.group(4) or "latest"],
    ),
    (re.compile(r"(看看|查看).*(最新|最近).*run", re.I), lambda m: ["run", "latest"]),
]


# A word each pattern above needs: a message with none of them (most) skips the patterns,
# each of which would scan it (~7 µs a message, on the ingress's accept path).
_NEEDED = (
    "autonom", "autolearn", "auto-learn", "auto learn", "tell me", "notify me", "let me know",
    "wait", "show", "what", "status of", "自主模式", "自动学习", "等", "看看", "查看",
)  # fmt: skip


def match_intent(text: str, config: Config) -> tuple[str, list[str]] | None:
    if len(text) > config.agents.defaults.runtime_control.intent_max_input_chars:
        return None
    folded = text.casefold()  # as the patterns' re.I matches: "WAIT" and "wait" alike
    if not any(word in folded for word in _NEEDED):
        return None
    for pattern, to_args in _INTENTS:
        found = pattern.search(text)
        if found:
            args = to_args(found)  # a leading "/name" picks the command; else /status
            return (args[0], args[1:]) if args and args[0][0] == "/" else ("/status", args)
    return None


# -- the commands ----------------------------------------------------------------------------
