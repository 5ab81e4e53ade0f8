"""Splitting a long reply into parts that fit one platform message.

Cuts at a paragraph break if one falls in the second half of the part, else at a line
break, else at a space, else hard. A cut inside a fenced code block closes the fence at the
end of the part and reopens it (with its language) at the start of the next, so every part
renders as the code it holds.
"""

from __future__ import annotations

import re

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


def _cut(text: str, limit: int) -> int:
    """Where to end the next part of ``text`` (at most ``limit`` characters)."""
    if len(text) <= limit:
        return len(text)
    window = text[:limit]
    for sep in ("\n\n", "\n", " "):
        at = window.rfind(sep)
        if at >= limit // 2:
            return at + len(sep)
    return limit


def split_text(text: str, limit: int) -> list[str]:
    """``text`` as parts of at most ``limit`` characters (never an empty list)."""
    if limit < 16:
        raise ValueError("limit too small to split into readable parts")
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while rest:
        reserve = 8  # room for a closing fence
        end = _cut(rest, limit - reserve)
        part, rest = rest[:end], rest[end:]
        fence = _open_fence(part)
        if fence is not None and rest:
            part = part.rstrip("\n") + "\n" + fence[:3]
            rest = fence + "\n" + rest
        parts.append(part.rstrip() or part)
        if rest and len(rest) <= limit:
            parts.append(rest)
            break
    return parts
