"""Masking secrets in text and in log events (claw_worker/logs.py runs it on every line).

Values of fields named as credentials (``api_key``, ``token``, ``*_secret``, ``password``,
``authorization``: see ``SECRET_FIELD``) are masked whole; strings are scrubbed of things that
look like API keys, bearer tokens, Telegram bot tokens and passwords in URLs, and of the
literal secrets given (the config's). Most strings hold none of them: one search over all
the patterns decides whether the substitutions run at all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

MASK = "****"
# Literal config secrets shorter than this are not scrubbed from free text: masking "abc"
# wherever it appears would wreck the logs and protect nothing.
MIN_LITERAL_SECRET = 6
# Log fields whose value is masked whole: a credential by its name (``api_key``,
# ``gateway_token``, ``app_secret``, ``authorization`` ...). Not a word inside a name: a
# field like ``memory_recall_keywords`` or ``total_tokens`` holds no secret.
SECRET_FIELD = re.compile(
    r"(?:^|_)(?:api_?key|token|secret|password|passwd|authorization|credentials?)$", re.I
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-" + MASK),
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), MASK),  # Telegram bot token
    (re.compile(r"(?i)\bbot\d{5,}:[A-Za-z0-9_-]{30,}"), "bot" + MASK),  # ...inside a URL path
    (
        re.compile(r"(?i)((?:api[_-]?key|token|secret|password)=)[^&\s\"']+"),
        r"\1" + MASK,
    ),
    # A password in a URL. The scheme is bounded so a long word cannot make this quadratic.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,15}://[^:/\s@]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
)


@functools.lru_cache(maxsize=1024)  # field names repeat: the same few hundred at most
def is_secret_field(name: str) -> bool:
    return SECRET_FIELD.search(name) is not None


def _scoped(pattern: re.Pattern[str]) -> str:
    """``pattern`` as a group that keeps its flags inside an alternation."""
    source = pattern.pattern
    if source.startswith("(?i)"):
        return f"(?i:{source[4:]})"
    return f"(?:{source})"


class Redactor:
    """A structlog processor that masks secrets anywhere in the event dict."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = sorted({s for s in secrets if len(s) >= MIN_LITERAL_SECRET}, key=len)
        # Longest first, so a secret that contains another is masked whole.
        self._literal = (
            re.compile("|".join(re.escape(s) for s in reversed(literals))) if literals else None
        )
        # One pass that finds anything to mask: most strings have nothing, and skip the subs.
        alternatives = [_scoped(p) for p, _ in _PATTERNS]
        if self._literal is not None:
            alternatives.append(f"(?:{self._literal.pattern})")
        self._any = re.compile("|".join(alternatives))

    def scrub(self, text: str) -> str:
        if self._any.search(text) is None:
            return text
        if self._literal is not None:
            text = self._literal.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def _clean(self, value: Any, secret: bool) -> Any:
        if isinstance(value, str):
            return (MASK if value else value) if secret else self.scrub(value)
        if isinstance(value, bytes):
            return MASK if secret else self.scrub(value.decode("utf-8", "replace"))
        if isinstance(value, dict):
            return {k: self._clean(v, secret or is_secret_field(str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self._clean(v, secret) for v in value]
        if secret and not isinstance(value, int | float | bool) and value is not None:
            return MASK  # an object under a secret name: its repr may hold the secret
        return value  # numbers stay: a token *count* is not a secret

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(value, is_secret_field(key))
        return event_dict
