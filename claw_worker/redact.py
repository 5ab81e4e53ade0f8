"""Masking secrets in text and in log events (claw_worker/logs.py runs it on every line,
claw_worker/reply_filter.py on everything that leaves towards users).

Values of fields named as credentials (``api_key``, ``token``, ``*_secret``, ``password``,
``authorization``: see ``SECRET_FIELD``) are masked whole; strings are scrubbed of the
literal secrets given (the config's) and of the shapes in ``claw_worker/secret_shapes.py``:
API keys and tokens (OpenAI, Anthropic, GitHub, GitLab, AWS, Slack, Google, Stripe, Hugging
Face, npm), bearer and ``Authorization: token`` credentials, JWTs, Telegram bot tokens,
private key blocks, passwords in URLs, ``key=value`` and ``token: value`` pairs, and
``password: value`` to the end of the line, and card numbers that pass the Luhn check.

All of it runs on RE2 (google-re2: linear time whatever the text, so hostile text cannot
make a log line or a reply take quadratic time). Most strings hold no secret: one search
over every literal and shape at once (no captures: RE2's DFA alone) decides whether the
substitutions run at all; they run in two passes, the literals, then the shapes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

import re2

from claw_worker.secret_shapes import CARD, MASK, SHAPES, Shape, card_digits, luhn_valid

__all__ = ["MASK", "MIN_LITERAL_SECRET", "Redactor", "is_secret_field", "luhn_valid"]

# Literal config secrets shorter than this are not scrubbed from free text: masking "abc"
# wherever it appears would wreck the logs and protect nothing.
MIN_LITERAL_SECRET = 6
# The shortest text any shape can match ("token=x"): shorter strings (many log fields)
# skip the search, whose call costs more than the scan of a short string.
_SHORTEST_SHAPE = 7
_MASK_BYTES = MASK.encode()
# Log fields whose value is masked whole: a credential by its name (``api_key``,
# ``gateway_token``, ``app_secret``, ``authorization`` ...). Not a word inside a name: a
# field like ``memory_recall_keywords`` or ``total_tokens`` holds no secret.
SECRET_FIELD = re.compile(
    r"(?:^|_)(?:api_?key|token|secret|password|passwd|authorization|credentials?)$", re.I
)


@functools.lru_cache(maxsize=1024)  # field names repeat: the same few hundred at most
def is_secret_field(name: str) -> bool:
    return SECRET_FIELD.search(name) is not None


def _options(*, capture: bool) -> re2.Options:
    options = re2.Options()
    options.max_mem = 32 << 20  # the DFA of all shapes at once: room to stay off the NFA
    options.never_capture = not capture  # the search only asks "is there any?"
    return options


# Patterns and text are UTF-8 bytes: google-re2's wrapper maps every match's offsets back
# to characters for str, which costs more than the search itself.
@functools.lru_cache(maxsize=8)  # a few configs' worth (reloads, the ingress and tests)
def _compile(literals: tuple[str, ...], shapes: bool) -> tuple[Any, Any, Any, dict[int, Shape]]:
    """(the search over literals and shapes, the literals alone, the shapes with their
    groups, the shape of each group index); None for a part with nothing to search for."""
    literal = "|".join(re2.escape(s) for s in literals)
    alternatives = [f"(?:{literal})"] if literal else []
    shaped = "|".join(f"(?P<{shape.name}>{shape.pattern})" for shape in SHAPES)
    if shapes:
        alternatives.append(shaped)
    if not alternatives:
        return None, None, None, {}
    search = re2.compile("|".join(alternatives).encode(), _options(capture=False))
    literal_re = re2.compile(literal.encode(), _options(capture=False)) if literal else None
    if not shapes:
        return search, literal_re, None, {}
    shapes_re = re2.compile(shaped.encode(), _options(capture=True))
    return search, literal_re, shapes_re, {shapes_re.groupindex[s.name.encode()]: s for s in SHAPES}


class Redactor:
    """Masks secrets in strings (:meth:`scrub`) and, as a structlog processor, anywhere in
    an event dict. ``shapes=False``: only the literal secrets (replies of a fleet that
    turned ``security.redact_replies`` off)."""

    def __init__(self, secrets: Iterable[str] = (), *, shapes: bool = True) -> None:
        # Longest first, so a secret that contains another is masked whole.
        literals = sorted({s for s in secrets if len(s) >= MIN_LITERAL_SECRET}, key=len)
        compiled = _compile(tuple(reversed(literals)), shapes)
        self._any, self._literal, self._shapes, self._shape_at = compiled
        lengths = [len(s) for s in literals] + ([_SHORTEST_SHAPE] if shapes else [])
        self._shortest = min(lengths, default=0)  # a shorter string holds nothing to mask

    def scrub(self, text: str) -> str:
        if self._any is None or len(text) < self._shortest:
            return text
        data = text.encode("utf-8", "surrogatepass")  # a lone surrogate survives the trip
        if self._any.search(data) is None:
            return text
        # Literals first, on their own: a shape that starts before a literal secret and
        # ends inside it would otherwise leave the secret's tail visible.
        if self._literal is not None:
            data = self._literal.sub(lambda _match: _MASK_BYTES, data)
        if self._shapes is not None:
            data = self._shapes.sub(self._replace, data)
        return data.decode("utf-8", "surrogatepass")

    def _replace(self, match: Any) -> bytes:
        # The group closing last and outermost is the matched shape's own: one look.
        group = match.lastindex
        return _masked(self._shape_at[group], match, group)

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


def _masked(shape: Shape, match: Any, group: int) -> bytes:
    found = match.group(group).decode("utf-8", "surrogatepass")
    if shape.accept is not None and not shape.accept(found):
        return bytes(match.group(group))
    if shape is CARD:  # the last four digits stay, so a user can tell which card it was
        return (MASK + card_digits(found)[-4:]).encode()
    kept = match.group(group + 1).decode("utf-8", "surrogatepass") if shape.keeps_prefix else ""
    quote = found[len(kept) : len(kept) + 1]
    if quote in ('"', "'"):  # "password": "x" stays valid JSON: "password": "****"
        masked = f"{kept}{quote}{shape.mask}{quote}{shape.suffix}"
    else:
        masked = f"{kept}{shape.mask}{shape.suffix}"
    return masked.encode("utf-8", "surrogatepass")
