"""Which resource keys a message takes: declared with ``[keys: ...]`` or inferred.

A declaration anywhere in the text (``[keys: repo:clawgo, file:pkg/agent/loop.go,
branch:main] fix the chat flow``) is honoured from anyone, a user's chat included; one that
cannot be read is an error that fails the message with the reason (a task that asked for
locks must not run without them).

Without one, keys are inferred only for the work the design calls tasks: pipeline tasks,
spawned sub-agents, cron jobs and autonomy rounds (``INFERRING_ORIGINS``). Two users
chatting about "README.md" must not wait for each other, so a chat, a heartbeat or a
self-check takes no inferred keys. Inference looks for file paths (a known extension, or a
slash in a path-like shape), repositories (``repo:x``, "the x repo", "repository x", a
GitHub/GitLab/Bitbucket URL) and branches ("branch x", "the x branch", "on main").

A key is ``kind:value``, normalised so that the same resource is one key: kinds and values
lower-case except file paths (``a/./b.py`` is ``a/b.py``, case kept: paths are
case-sensitive); a repository is its last path component without ``.git`` (``acme/api`` and
``api`` conflict: a lock errs on the side of waiting); a branch drops ``refs/heads/`` and
``origin/``. Keys are opaque: ``repo:x`` does not cover ``file:...`` inside it.
"""

from __future__ import annotations

import posixpath
import re

from claw_worker.contract import REPORT_KIND, InboundMessage, Origin

MAX_KEYS = 16  # a declaration with more is refused; inference keeps the first ones
MAX_VALUE_CHARS = 200
INFERRING_ORIGINS = frozenset({Origin.PIPELINE, Origin.SPAWN, Origin.CRON, Origin.AUTONOMY})

_DECLARATION = re.compile(r"\[\s*keys\s*:([^\]]*)\]", re.IGNORECASE)
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_ALIASES = {"repository": "repo", "path": "file"}
_EXAMPLE = "kind:value, e.g. [keys: repo:x, file:src/app.py, branch:main]"
_SEPARATORS = ", ;\t\n\r\f\v"
# One item: kind:"a quoted value" (its spaces kept), or a run without separators or quotes.
_ITEM = re.compile(r'([^\s,;:"]+:)"([^"]*)"|[^\s,;"]+')


class KeyDeclarationError(ValueError):
    """A ``[keys: ...]`` declaration that cannot be read; the message says why."""


def resource_keys(message: InboundMessage) -> list[str]:
    """The keys ``message`` must hold while it runs (sorted; empty: none).

    A pipeline task's or sub-agent's text quotes other tasks' results; its own words are
    ``metadata["goal"]``, so keys are read (declared or inferred) from those alone: a file
    merely mentioned in a dependency's result is not locked. A sub-agent's report (in its
    parent's session) has no words of its own: it quotes the job and the result, so it takes
    no keys (else a chat waited, its later messages behind it, for a file the report named).
    """
    if message.metadata.get("kind") == REPORT_KIND:
        return []
    own = message.metadata.get("goal")
    text = own if isinstance(own, str) and own else message.text
    declared = declared_keys(text)
    if declared is not None:
        return declared
    if message.origin in INFERRING_ORIGINS:
        return infer_keys(text)
    return []


def declared_keys(text: str) -> list[str] | None:
    """The keys of the first ``[keys: ...]`` in ``text``; None when there is none."""
    found = _DECLARATION.search(text)
    if found is None:
        return None
    items = _items(found.group(1))
    if not items:
        raise KeyDeclarationError(f"[keys: ...] names no key; write {_EXAMPLE}")
    keys: set[str] = set()
    for item in items:
        kind, sep, value = item.partition(":")
        kind = _ALIASES.get(kind.lower(), kind.lower())
        if not sep or not _KIND.fullmatch(kind) or not value:
            raise KeyDeclarationError(f"resource key {item[:80]!r} is not {_EXAMPLE}")
        keys.add(normalise(kind, value))
    if len(keys) > MAX_KEYS:
        raise KeyDeclarationError(f"[keys: ...] names {len(keys)} keys; at most {MAX_KEYS}")
    return sorted(keys)


def _items(body: str) -> list[str]:
    """The items of a declaration, apart at commas, semicolons and spaces; a value in
    double quotes keeps its spaces (``file:"docs/release notes.md"``)."""
    items, at = [], 0
    for found in _ITEM.finditer(body):
        if body[at : found.start()].strip(_SEPARATORS):
            break  # a quote that encloses no value was skipped: refused below
        kind, quoted = found.group(1), found.group(2)
        items.append(found.group(0) if kind is None else kind + quoted)
        at = found.end()
    if body[at:].strip(_SEPARATORS):
        raise KeyDeclarationError(
            f"[keys: ...] has a double quote that encloses no value ({body[at:].strip()[:80]!r});"
            f' quote a whole value: file:"docs/release notes.md"'
        )
    return items


def normalise(kind: str, value: str) -> str:
    value = value.strip().strip("`'\"")
    if kind == "file":
        value = posixpath.normpath(value)
        value = value if value != "." else ""
    elif kind == "repo":
        value = value.lower().rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]
    elif kind == "branch":
        value = value.lower().removeprefix("refs/heads/").removeprefix("origin/")
    else:
        value = value.lower()
    if not value or len(value) > MAX_VALUE_CHARS or not value.isprintable():
        raise KeyDeclarationError(
            f"resource key {kind}:{value[:80]!r} needs a printable value of at most "
            f"{MAX_VALUE_CHARS} characters"
        )
    return f"{kind}:{value}"


# -- inference -------------------------------------------------------------------------------

_EXTENSIONS = frozenset({
    "py", "pyi", "go", "rs", "js", "mjs", "cjs", "jsx", "ts", "tsx", "java", "kt", "kts", "c",
    "h", "cc", "cpp", "hpp", "cs", "rb", "php", "swift", "scala", "sh", "bash", "zsh", "ps1",
    "sql", "md", "rst", "txt", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg", "conf",
    "env", "lock", "xml", "html", "css", "scss", "vue", "svelte", "proto", "tf", "lua", "pl",
    "r", "ipynb", "mk", "gradle", "csv", "gitignore", "dockerfile",
})  # fmt: skip
_BARE_FILES = frozenset({"makefile", "dockerfile", "justfile", "procfile", "gemfile"})
_SEGMENT = re.compile(r"[\w@.+-]+")
_STRIP = "`'\"()[]{}<>,;:!?*"
_NAME = r"(?P<q>[`'\"]?)(?P<name>\w[\w./-]{0,199}?)(?P=q)"
_END = r"(?=[\s,;)\]]|[.!?]?$|[.!?]\s)"  # the name ends at a space, a comma, a full stop
_SURE = r"(?P<sure>:\s*|\s+(?:named|called)\s+)"  # "repo: x", "branch named x"
_WELL_KNOWN_BRANCHES = ("main", "master", "develop", "dev", "trunk")
# (kind, pattern, strict): a strict pattern's name is taken only when it is sure (a colon,
# "named", quotes), shaped like an identifier (a slash, dash, underscore or digit in it) or
# a well-known branch: "branch x" is too often "branch too".
_PATTERNS = (
    ("repo", re.compile(r"\b(?:github|gitlab|bitbucket)\.(?:com|org)/[\w.-]+/(?P<name>[\w.-]+)", re.I), False),
    ("repo", re.compile(r"\bthe\s+" + _NAME + r"\s+repo(?:sitory)?\b", re.I), False),
    ("repo", re.compile(r"\brepo(?:sitory)?(?:" + _SURE + r"|\s+)" + _NAME + _END, re.I), True),
    ("branch", re.compile(r"\b(?:the\s+)?" + _NAME + r"\s+branch\b", re.I), False),
    ("branch", re.compile(r"\bbranch(?:" + _SURE + r"|\s+)" + _NAME + _END, re.I), True),
    ("branch", re.compile(r"\b(?:on|to|into|onto|from|off|against)\s+(?:the\s+)?(?P<name>"
                          + "|".join(_WELL_KNOWN_BRANCHES) + r")\b", re.I), False),
)  # fmt: skip
_COMMON = {
    "a", "an", "the", "this", "that", "these", "those", "my", "our", "your", "its", "their",
    "same", "new", "old", "current", "default", "other", "another", "each", "every", "any",
    "some", "one", "is", "was", "are", "and", "or", "to", "from", "for", "of", "in", "on",
    "at", "with", "as", "by", "it", "be", "which", "whole", "entire", "remote", "local",
    "if", "then", "not", "no", "named", "called",
}  # fmt: skip
_NOT_NAMES = {
    "repo": _COMMON | {"main", "git", "code", "project", "source", "upstream", "github"},
    "branch": _COMMON | {"feature", "working", "git", "separate", "topic", "off", "out"},
}


def infer_keys(text: str) -> list[str]:
    """Keys found in free text, the first MAX_KEYS in order of appearance (sorted)."""
    found: dict[str, int] = {}

    def add(kind: str, value: str, at: int) -> None:
        try:
            key = normalise(kind, value.rstrip("."))
        except KeyDeclarationError:
            return
        found.setdefault(key, at)

    for kind, pattern, strict in _PATTERNS:
        for match in pattern.finditer(text):
            name = match.group("name").rstrip(".")
            if name.lower() in _NOT_NAMES[kind] or (strict and not _named(match)):
                continue
            add(kind, name, match.start())
    for match in re.finditer(r"\S+", text):
        path = _file_path(match.group())
        if path:
            add("file", path, match.start())
    first = sorted(found, key=found.__getitem__)[:MAX_KEYS]
    return sorted(first)


def _named(match: re.Match[str]) -> bool:
    """Whether a strict pattern's name is surely a name (see _PATTERNS)."""
    name = match.group("name")
    if match.group("sure") or match.group("q"):
        return True
    if _file_path(name):
        return False  # "repo README.md": a file, not a repository
    return bool(re.search(r"[/_\d-]", name)) or name.lower() in _WELL_KNOWN_BRANCHES


def _file_path(token: str) -> str | None:
    """``token`` (a word of the text) as a file path, or None when it does not look like one."""
    token = token.strip(_STRIP).rstrip(".")
    if not token or "://" in token or "=" in token or ("@" in token and "/" not in token):
        return None
    if re.match(r"(?:https?:|www\.|(?:github|gitlab|bitbucket)\.(?:com|org)/)", token, re.I):
        return None
    lead = re.match(r"(?:~/|\.\.?/|/)", token)
    body = token[lead.end() :] if lead else token
    segments = body.rstrip("/").split("/")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        return None
    name = segments[-1]
    stem, dot, ext = name.rpartition(".")
    if dot and ext.lower() in _EXTENSIONS and (stem or len(segments) > 1):
        return token
    if name.lower() in _BARE_FILES:
        return token
    if len(segments) > 1 and (lead or len(segments) > 2):
        return token
    return None
