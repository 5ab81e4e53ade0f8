"""Splitting a long reply into parts that fit one platform message.

Cuts at a paragraph break if one falls in the second half of the part, else at a line
break, else at a space, else hard. A cut inside a fenced code block closes the fence at the
end of the part and reopens it (with its language) at the start of the next, so every part
renders as the code it holds.

A part's size is measured as the platform counts it (``length``): characters by default,
UTF-16 code units for Telegram, where an emoji outside the BMP counts two. A part always
ends between two characters, never inside one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

FENCE = re.compile(r"^\s*(```|~~~)(.*)$")


def _open_fence(text: str) -> str | None:
    """The opening line of a fence still open at the end of ``text``, or None."""
    opened: str | None = None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if match is None:
            continue
        if opened is None:
            opened = line.strip()
        elif match.group(1) == opened[:3] and not match.group(2).strip():
            opened = None
    return opened


def _fitting(text: str, limit: int, length: Callable[[str], int]) -> int:
    """How many characters of ``text`` fit in ``limit`` as ``length`` measures them (each
    character counting at least one)."""
    if length is len:
        return min(len(text), limit)
    low, high = 0, min(len(text), limit)  # text[:low] fits; text[:high + 1] does not
    while low < high:
        mid = (low + high + 1) // 2
        if length(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return max(low, 1)


def _cut(text: str, limit: int, length: Callable[[str], int]) -> int:
    """Where to end the next part of ``text`` (at most ``limit``, as ``length`` measures)."""
    fit = _fitting(text, limit, length)
    if fit >= len(text):
        return len(text)
    window = text[:fit]
    for sep in ("\n\n", "\n", " "):
        at = window.rfind(sep)
        if at >= fit // 2:
            return at + len(sep)
    return fit


def split_text(text: str, limit: int, *, length: Callable[[str], int] = len) -> list[str]:
    """``text`` as parts of at most ``limit`` (characters, or what ``length`` counts;
    never an empty list)."""
    if limit < 16:
        raise ValueError("limit too small to split into readable parts")
    if length(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while rest:
        reserve = 8  # room for a closing fence
        end = _cut(rest, limit - reserve, length)
        part, rest = rest[:end], rest[end:]
        fence = _open_fence(part)
        if fence is not None and rest:
            part = part.rstrip("\n") + "\n" + fence[:3]
            rest = fence + "\n" + rest
        parts.append(part.rstrip() or part)
        if rest and length(rest) <= limit:
            parts.append(rest)
            break
    return parts
