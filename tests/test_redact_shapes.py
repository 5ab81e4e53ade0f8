"""The redactor's shapes of secrets (claw_worker/secret_shapes.py): each masks what it
should and leaves look-alikes alone, and hostile text cannot make it slow (RE2: linear)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claw_worker.redact import Redactor, luhn_valid
from tests.campaign import record

GITHUB = "ghp_" + "aB3" * 12
# Each shape: (text holding a secret, what must be gone, what stays) and look-alikes that
# must come out unchanged.
MASKED = [
    ("key sk-live-1234567890 here", "sk-live-1234567890", "key sk-**** here"),
    ("sk-ant-api03-abcDEF123456789", "api03-abc", "sk-ant-****"),
    (f"token {GITHUB} ok", GITHUB, "token ghp_**** ok"),
    ("gho_" + "x" * 36, "x" * 36, "gho_****"),
    ("pat github_pat_11ABCDEFG0123456789_abcdefXYZ", "11ABCDEFG", "pat github_pat_****"),
    ("aws AKIAIOSFODNN7EXAMPLE.", "IOSFODNN7", "aws AKIA****."),
    ("slack xoxb-123456789012-abcdefABCDEF", "123456789012", "slack xoxb-****"),
    ("xoxp-1111-2222-3333-abcd", "1111-2222", "xoxp-****"),
    ("g AIzaSyA1234567890abcdefghijklmnopqrstuv", "SyA1234", "g AIza****"),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nbye",
        "MIIEowIBAAKCAQEA",
        "-----BEGIN RSA PRIVATE KEY-----****\nbye",
    ),
    (
        "cut -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq",
        "MIIEvQ",
        "cut -----BEGIN PRIVATE KEY-----****",
    ),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9P x",
        "dozjgNryP4J3",
        "jwt eyJ**** x",
    ),
    (
        '{"password": "correct horse", "user": "amy"}',
        "correct",
        '{"password": "****", "user": "amy"}',
    ),
    ("db:\n  password: hunter2\n  host: db", "hunter2", "db:\n  password: ****\n  host: db"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "wJalrXU", "aws_secret_access_key = ****"),
    ("'api_key': 'abc123'", "abc123", "'api_key': '****'"),
    ("Authorization: Bearer abc123def456", "abc123def456", "Authorization: Bearer ****"),
    ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "Basic ****"),
    ("https://amy:s3cret@example.com/x", "s3cret", "https://amy:****@example.com/x"),
    ("GET /x?api_key=abc123&page=2", "abc123", "GET /x?api_key=****&page=2"),
    ("tg 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1", "AAHdq", "tg ****"),
    ('{"token": "9f8e7d6c5b4a"}', "9f8e7d", '{"token": "****"}'),
    ("bot_token: 123abc456def", "123abc", "bot_token: ****"),
    ("Authorization: token 9f8e7d6c5b4a3210", "9f8e7d", "Authorization: token ****"),
    ("xoxs-1234567890-abcdef", "1234567890", "xoxs-****"),
    ("xapp-1-A0123-4567890123-abcdef", "4567890123", "xapp-****"),
    ("https://admin:pa/ssw0rd@host/x", "ssw0rd", "https://admin:****@host/x"),
    ("redis://default:p@ssw0rd-Secret@host", "Secret", "redis://default:****@host"),
    ("password: correct horse battery staple\nnext", "horse", "password: ****\nnext"),
    ("glpat-abcdefghij0123456789", "abcdefghij", "glpat-****"),
    ("sk_live_abcdefghij0123 rk_live_abcdefghij0123", "abcdefghij", "sk_live_**** rk_live_****"),
    ("hf_abcdefghijklmnopqrstuvwxyz012345", "abcdefghij", "hf_****"),
    ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghij", "npm_****"),
    # Card numbers: 13 to 19 digits, spaces or dashes, the Luhn check passing.
    ("pay 4111 1111 1111 1111 now", "4111 1111 1111 1111", "pay ****1111 now"),
    ("card 5555-5555-5555-4444", "5555-5555", "card ****4444"),
    ("amex 378282246310005.", "378282246310005", "amex ****0005."),
    ("visa13 4222222222222", "4222222222222", "visa13 ****2222"),
]
UNCHANGED = [
    "bearer tokens are sent in a header",  # English, not a credential
    "Basic understanding of the problem",
    "ghp_short and gho_ too",
    "AKIA123 and AKIAshortlower",
    "xoxo hugs, xoxb-short",
    "AIza-not-enough",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----",
    "eyJhbGciOiJIUzI1NiJ9 alone",
    "tokens: 12345, total_tokens: 99",
    "max_tokens: 100 and the token is here",  # a count, and the word
    "xoxo hugs, xapp and hf_short",
    "the password field is empty",
    "https://example.com:8080/path@v2",
    "order 4111 1111 1111 1112",  # 16 digits, Luhn fails
    "ts 1732999999999 and 1732999999999123456 ns",  # timestamps start with 1
    "took 0.4111111111111111 s",  # a decimal fraction
    "id 41111111111111111111111",  # 23 digits: too long for a card
    "phone +49 30 1234567",
    "2026-11-30 19:28:41 run 12",
]


@pytest.mark.parametrize(("text", "secret", "expected"), MASKED)
def test_each_shape_is_masked(text: str, secret: str, expected: str) -> None:
    scrubbed = Redactor().scrub(text)
    assert secret not in scrubbed
    assert scrubbed == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert Redactor().scrub(text) == text


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567812345678")


def test_literals_are_masked_whole_and_without_shapes() -> None:
    # A literal config secret goes first, whole, even where a shape would start earlier.
    both = Redactor(["s3cret-value/with-slash"])
    assert both.scrub("https://amy:s3cret-value/with-slash@host") == "https://amy:****@host"
    only = Redactor(["my-literal-secret"], shapes=False)  # security.redact_replies off
    text = "my-literal-secret sk-live-1234567890 4111 1111 1111 1111"
    assert only.scrub(text) == "**** sk-live-1234567890 4111 1111 1111 1111"
    assert Redactor(shapes=False).scrub(text) == text


def test_non_ascii_and_surrogates_survive() -> None:
    text = "clé 🎉 \udcff sk-live-1234567890 é"
    assert Redactor().scrub(text) == "clé 🎉 \udcff sk-**** é"


def test_log_events_mask_cards() -> None:
    event = Redactor()(None, "info", {"event": "paid with 4111-1111-1111-1111", "n": 4111})
    assert event == {"event": "paid with ****1111", "n": 4111}


# -- hostile text -------------------------------------------------------------------------

# Pieces of the shapes, so generated text keeps almost matching: the worst case of a
# backtracking engine (a run of "sk-" or digits, BEGIN without END, "a://b:" without "@").
FRAGMENTS = [
    "sk-",
    "sk-ant-",
    "ghp_",
    "github_pat_",
    "AKIA",
    "xoxb-",
    "AIza",
    "eyJ",
    ".",
    "eyJa.",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END",
    "Bearer ",
    "basic ",
    "password",
    ": ",
    '"',
    "'",
    "=",
    "api_key=",
    "a://b:",
    "@",
    "/",
    "4",
    "1",
    " ",
    "-",
    "0",
    "bot12345:",
    "12345:",
    "x",
    "\n",
    "é",
]
SIZE = 20_000


def _seconds(redactor: Redactor, text: str) -> float:
    best = float("inf")
    for _ in range(3):  # the best of three: scheduling noise only ever adds
        start = time.perf_counter()
        redactor.scrub(text)
        best = min(best, time.perf_counter() - start)
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=40))
def test_hostile_text_costs_no_more_than_text_full_of_secrets(pieces: list[str]) -> None:
    """Linear time on text built to almost match: compared with text of the same length
    that is all real secrets (the most substitution work honest text can cause), within a
    factor far below what backtracking costs (thousands on 20 KB)."""
    redactor = Redactor(["literal-config-secret"])
    unit = "".join(pieces)
    hostile = (unit * (SIZE // len(unit) + 1))[:SIZE]
    dense = ("key sk-live-1234567890 card 4111 1111 1111 1111 password: x " * 400)[:SIZE]
    ratio = _seconds(redactor, hostile) / _seconds(redactor, dense)
    assert ratio < 50, (ratio, unit[:200])


def test_campaign_hostile_text_figures() -> None:
    """The figures of the shapes above: every secret masked, every look-alike kept."""
    redactor = Redactor()
    escapes = sum(secret in redactor.scrub(text) for text, secret, _ in MASKED)
    wrongly = sum(redactor.scrub(text) != text for text in UNCHANGED)
    record("output: secret shapes", tried=len(MASKED), rejected=len(MASKED) - escapes,
           escapes=escapes)  # fmt: skip
    assert escapes == 0 and wrongly == 0
