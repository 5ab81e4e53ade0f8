"""Config JSON from untrusted text: decoding the file's bytes, parsing with limits, and
checking that every value is plain data the rest of the code can encode and compare.

Each problem is a :class:`JsonTextError` whose message says where (a line and column, or a
dotted path) and what to do; ``config/store.py`` prefixes the file name.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

# No config section is nested more than a few levels; anything deeper is not a config.
MAX_DEPTH = 32
# No setting needs a number this long; Python refuses to read ints past ~4300 digits.
MAX_INT_DIGITS = 64
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# A "\\ud800" escape without its pair, or bytes that were not UTF-8 (argv, environment).
_NOT_TEXT = "is not text: it holds a lone surrogate (\\ud800-\\udfff)"
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class JsonTextError(ValueError):
    """Text that is not usable config JSON; the message says where and why."""


class _LongInt(str):
    """An integer literal too long to convert, kept as its text so the path can be named."""


def decode(raw: bytes) -> str:
    """``raw`` as text: UTF-8, with or without a byte-order mark."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise JsonTextError(f"the file is {name} text; save it as UTF-8")
    if b"\x00" in raw[:4]:  # JSON starts with ASCII, which UTF-16/32 pads with NULs
        raise JsonTextError("the file looks like UTF-16 or UTF-32 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise JsonTextError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} column {column} "
            "(Latin-1 or another legacy encoding?); save the file as UTF-8"
        ) from None


def _parse_int(text: str) -> int | _LongInt:
    return _LongInt(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def loads(text: str) -> Any:
    """The JSON value in ``text``. Syntax errors are ``json.JSONDecodeError`` as usual;
    nesting too deep for the parser is a :class:`JsonTextError` with its position. Numbers
    too long to read come back as markers that :func:`problems` reports by path."""
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise JsonTextError(f"nested too deeply ({_deep_position(text)})") from None


def _deep_position(text: str) -> str:
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                return f"more than {MAX_DEPTH} levels at line {line} column {column}"
        elif token in "]}":
            depth -= 1
    return f"more than {MAX_DEPTH} levels"


def problems(data: Any, *, values: bool = True, top: str = "(top level)") -> list[str]:
    """``"<dotted path>: <problem>"`` for each part of ``data`` that is not plain data:
    nesting deeper than :data:`MAX_DEPTH` and numbers too long to read; with ``values``
    also strings or keys holding lone surrogates (a ``"\\ud800"`` escape: not text, so it
    cannot be written out or sent anywhere) and numbers that are not finite. ``top`` names
    ``data`` itself."""
    found: list[str] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        where = ".".join(path) or top
        if isinstance(node, _LongInt):
            found.append(f"{where}: a number with {len(node.lstrip('-'))} digits is too large")
        elif isinstance(node, dict | list):
            if len(path) >= MAX_DEPTH:
                found.append(f"{where}: nested more than {MAX_DEPTH} levels deep")
                continue
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in reversed(list(items)):
                if values and isinstance(key, str) and _SURROGATE.search(key):
                    found.append(f"{where}: the key {shown(key)} {_NOT_TEXT}")
                    continue
                stack.append(((*path, str(key)), child))
        elif values and isinstance(node, str) and _SURROGATE.search(node):
            found.append(f"{where}: {shown(node)} {_NOT_TEXT}")
        elif values and isinstance(node, float) and not math.isfinite(node):
            found.append(f"{where}: {node} is not a finite number")
    return found


def is_text(value: str) -> bool:
    """``value`` holds no lone surrogates, so it can be encoded as UTF-8."""
    return not _SURROGATE.search(value)


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, surrogates escaped, cut at ``limit`` characters."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(cut)
