"""The shapes of secrets the redactor (claw_worker/redact.py) masks in free text.

Each shape is an RE2 pattern (google-re2 syntax: no look-around, no back-references; every
pattern runs in linear time, so there is no catastrophic backtracking to bound). All the
shapes are searched as one alternation in this order: where two match at the same place,
the first listed wins. A shape that ``keeps_prefix`` has the part to keep (``ghp_``,
``api_key=``, ``https://user:``) as its first group; the rest of the match is masked.
``accept`` is a check in Python a match must pass to be masked (the Luhn check of a card
number): a match that fails it is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MASK = "****"


@dataclass(frozen=True)
class Shape:
    name: str  # also the RE2 group's name: letters and underscores
    pattern: str
    mask: str = MASK  # what replaces the secret (after the kept prefix)
    suffix: str = ""  # put back after the mask: the URL password's "@"
    keeps_prefix: bool = False
    accept: Callable[[str], bool] | None = None


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only) holds."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def looks_like_credential(value: str) -> bool:
    """A word after "Bearer"/"Basic" is a credential, not English ("bearer tokens are..."),
    when it has a digit, a base64 sign, or a capital letter past its first character."""
    return any(c.isdigit() or c in "+/=_~" for c in value) or any(c.isupper() for c in value[1:])


def _auth_credential(scheme: str, value: str) -> bool:
    # "Bearer <token>" as an Authorization header writes it: any token. "bearer tokens"
    # and "Basic understanding" are English; a Basic credential is base64 ("user:pass").
    return (scheme[0] == "B" and scheme.lower() == "bearer") or looks_like_credential(value)


_SEPARATORS = str.maketrans("", "", " -.")


def card_digits(found: str) -> str:
    """The digits of a card number match ("4111 1111-..." -> "41111111...")."""
    return found.translate(_SEPARATORS)


def _card_number(found: str) -> bool:
    # A decimal fraction (".4111...") is a measurement; a number failing the Luhn check is
    # an order number, an id or a phone number: both are left as they are.
    return not found.startswith(".") and luhn_valid(card_digits(found))


# Names that hold a secret in a "name: value" pair (JSON, YAML, a config dump), possibly
# with a prefix: "password", "db_password", "aws_secret_access_key", "openai_api_key",
# "token", "bot_token". Not "tokens" or "max_tokens" (a count): the name must end there.
_PASSWORD_NAMES = r"(?:[A-Za-z0-9]+[_-])*(?:password|passwd|passphrase)"
_SECRET_NAMES = (
    r"(?:[A-Za-z0-9]+[_-])*(?:secret|secret[_-]access[_-]key"
    r"|api[_-]?key|private[_-]?key|token)"
)
# A "name: value" pair's value: quoted (the quotes kept), or one word.
_QUOTED = r"\"[^\"\n]{1,256}\"|'[^'\n]{1,256}'"

CARD = Shape(
    "card",
    # 13 to 19 digits, single spaces or dashes between them, starting as the card networks
    # do (2-6: Mastercard, Amex, Diners, JCB, Visa, Discover, UnionPay). Millisecond and
    # nanosecond timestamps start with 1 and never match. The optional "." lets a decimal
    # fraction match whole, and ``accept`` leave it.
    r"\.?\b[2-6](?:[ -]?[0-9]){12,18}\b",
    accept=_card_number,
)

SHAPES: tuple[Shape, ...] = (
    Shape(
        "private_key",
        # The whole block; a block cut short (a preview, a truncated paste) to the end.
        r"(-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----)"
        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)",
        keeps_prefix=True,
    ),
    Shape(
        "jwt",
        r"\b(eyJ)[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        keeps_prefix=True,
    ),
    Shape(
        "auth_token_header",  # "Authorization: token <t>" (GitHub's older scheme)
        r"(\b(?i:authorization)[\"']?[ \t]{0,8}[:=][ \t]{0,8}[\"']?(?i:token)[ \t]+)"
        r"[A-Za-z0-9._~+/=-]{6,}",
        keeps_prefix=True,
    ),
    Shape(
        "auth_header",
        r"\b((?i:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}",
        keeps_prefix=True,
        accept=lambda found: _auth_credential(*found.split(None, 1)),
    ),
    Shape("anthropic_key", r"\b(sk-ant-)[A-Za-z0-9_-]{8,}", keeps_prefix=True),
    Shape("openai_key", r"\b(sk-)[A-Za-z0-9_-]{8,}", keeps_prefix=True),
    Shape("github_token", r"\b(gh[pousr]_)[A-Za-z0-9]{36,}", keeps_prefix=True),
    Shape("github_pat", r"\b(github_pat_)[A-Za-z0-9_]{22,}", keeps_prefix=True),
    Shape("aws_access_key", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", keeps_prefix=True),
    Shape("slack_token", r"\b(xox[a-z]-|xapp-)[A-Za-z0-9-]{10,}", keeps_prefix=True),
    Shape("gitlab_token", r"\b(glpat-)[A-Za-z0-9_-]{20,}", keeps_prefix=True),
    Shape("stripe_key", r"\b([sr]k_(?:live|test)_)[A-Za-z0-9]{10,}", keeps_prefix=True),
    Shape("huggingface_token", r"\b(hf_)[A-Za-z0-9]{30,}", keeps_prefix=True),
    Shape("npm_token", r"\b(npm_)[A-Za-z0-9]{36,}", keeps_prefix=True),
    Shape("google_api_key", r"\b(AIza)[0-9A-Za-z_-]{35}", keeps_prefix=True),
    Shape("telegram_bot_url", r"\b((?i:bot))[0-9]{5,}:[A-Za-z0-9_-]{30,}", keeps_prefix=True),
    Shape("telegram_token", r"\b[0-9]{5,}:[A-Za-z0-9_-]{30,}"),
    Shape(
        "key_value",
        r"((?i:api[_-]?key|token|secret|password)=)[^&\s\"']+",
        keeps_prefix=True,
    ),
    Shape(
        "password_pair",
        # "password": "x y", or password: x y to the end of the line (a passphrase has
        # spaces: "correct horse battery staple"). A quoted value keeps its quotes.
        rf"(\b(?i:{_PASSWORD_NAMES})[\"']?[ \t]{{0,8}}[:=][ \t]{{0,8}})"
        rf"(?:{_QUOTED}|[^\s\"'][^\n]{{0,255}})",
        keeps_prefix=True,
    ),
    Shape(
        "secret_pair",
        # "token": "x", api_key: x, 'api_key': 'x'.
        rf"(\b(?i:{_SECRET_NAMES})[\"']?[ \t]{{0,8}}[:=][ \t]{{0,8}})"
        rf"(?:{_QUOTED}|[^\s\"',;{{}}]{{1,256}})",
        keeps_prefix=True,
    ),
    Shape(
        "url_password",
        # The scheme is bounded: a long word before "://" costs nothing more. The password
        # runs to the last "@" of the word ("p@ss/w0rd@host"), unless it is all digits
        # before a "/": that is a port and a path ("host:8080/path@v2").
        r"(?i:(\b[a-z][a-z0-9+.-]{0,15}://[^:/\s@]*:))(?:[^@\s/]*[^@\s/0-9][^\s]*|[^@\s/]+)@",
        suffix="@",
        keeps_prefix=True,
    ),
    CARD,
)
