"""JSON read from an LLM API, made safe to keep: no lone UTF-16 surrogates.

JSON may escape half of a surrogate pair alone (``"\\ud800"``); Python decodes it to a str
that cannot be encoded as UTF-8, so the first write to Redis, a file or the next request
raised UnicodeEncodeError and the message failed after its retries. Models do emit these
(a cut emoji at a token boundary), so each one is replaced by U+FFFD where the answer is
decoded: the whole body, each streamed chunk, and a tool call's arguments.
"""

from __future__ import annotations

import json
import re
from typing import Any

from claw_worker.contract import replace_lone_surrogates

# What can make one: an escape, or (json.loads decodes bytes with "surrogatepass") the
# UTF-8-style bytes of a surrogate, which are not UTF-8.
_ESCAPED = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_ESCAPED_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def loads(text: str | bytes) -> Any:
    """``json.loads``, with every lone surrogate in a key or string replaced by U+FFFD
    (ValueError and RecursionError as json.loads raises them)."""
    return loads_checked(text)[0]


def loads_checked(text: str | bytes) -> tuple[Any, bool]:
    """:func:`loads`, and whether ``text`` could hold a surrogate (then its value was
    cleaned, and a copy of ``text`` kept beside it should be written anew from it)."""
    value = json.loads(text)
    if may_hold_surrogates(text):
        return replace_lone_surrogates(value), True
    return value, False


def may_hold_surrogates(text: str | bytes) -> bool:
    """Whether decoding ``text`` can give a lone surrogate (else it needs no cleaning)."""
    if isinstance(text, str):
        return _ESCAPED.search(text) is not None
    return _ESCAPED_BYTES.search(text) is not None
