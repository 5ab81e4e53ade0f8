"""The ``exec`` deny list, the last line behind the sandbox and the resource limits.

A configured pattern (``tools.exec.deny_patterns``) is matched against the command as
written and against normalised forms of it, so that trivial rewrites do not get past:

- the flat form: quotes and ``\\`` escapes removed, ``$IFS``/``${IFS}`` and empty
  expansions (``$@``, ``$*``, ``$9``) dropped, runs of spaces collapsed
  (``r"m" -rf${IFS}/`` reads ``rm -rf /``);
- each simple command in canonical form: the program's base name (``/bin/rm``, ``\\rm``),
  wrappers skipped (``sudo``, ``env``, ``command``, ...), every short flag merged into one
  cluster in the order written (``-r -f`` = ``-rf``; for ``rm`` also ``--recursive
  --force``), then the operands with ``/``, ``//``, ``/*`` and ``/.`` all read ``/``, then
  the other long options (``rm -r -f --no-preserve-root //*`` reads ``rm -rf /``);
- every quoted word that is itself a command line (``sh -c '...'``, ``eval "..."``), in
  the same forms.

Fork bombs are refused whatever the patterns: any shell function whose body calls itself at
least twice with a ``&`` or ``|`` in it (``:(){ :|:& };:``, ``bomb(){ bomb|bomb & }; bomb``).

A determined command can still hide what it runs (variables, ``base64 -d | sh``): the
sandbox and the limits are what hold; this catches the careless and the obvious.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import re2

# $IFS in its spellings (``$IFS``, ``${IFS}``, ``$IFS$9``, ``${IFS%?}``) reads as a space.
_IFS = re.compile(r"\$\{IFS[^}]*\}|\$IFS")
# Expansions that are empty in a ``sh -c`` command: the positional parameters.
_EMPTY_EXPANSION = re.compile(r"\$\{?[@*1-9]\}?")
_LINE_CONTINUATION = re.compile(r"\\\n")
_SPACES = re.compile(r"\s+")
# Tokens that end one simple command and start another.
_SEPARATORS = frozenset({";", "&", "&&", "|", "||", "(", ")", "{", "}", "`", "$", "!", ";;",
                         "|&", "\n", "then", "do", "else", "elif", "if", "while", "until",
                         "time"})  # fmt: skip
# Programs that run their arguments as a command: skipped to reach the real program.
_WRAPPERS = frozenset({"sudo", "doas", "env", "command", "exec", "nohup", "nice", "ionice",
                       "busybox", "xargs", "setsid", "stdbuf", "timeout", "chroot"})  # fmt: skip
# Long options of rm that are short flags in other spellings.
_RM_LONG_FLAGS = {"--recursive": "r", "--force": "f", "--dir": "d", "--verbose": "v"}
_NESTED_DEPTH = 3  # sh -c "sh -c '...'" is unwrapped this deep


class CommandDenied(ValueError):
    """The command matches the deny list; the message says which rule."""


def check_command(command: str, patterns: Sequence[str]) -> None:
    """Raise ``CommandDenied`` when ``command`` is a fork bomb or one of its forms matches
    one of ``patterns``."""
    forms = list(command_forms(command))
    for tokens in _token_lists(command):
        bomb = fork_bomb(tokens)
        if bomb:
            raise CommandDenied(
                f"command refused: the function {bomb!r} calls itself twice in the "
                "background (a fork bomb)"
            )
    for pattern in patterns:
        regex = _deny_regex(pattern)
        if any(regex.search(form) for form in forms):
            raise CommandDenied(
                f"command refused: it matches the deny pattern {pattern!r} "
                "(tools.exec.deny_patterns), after quotes, escapes, $IFS and flag "
                "spellings are normalised"
            )


def command_forms(command: str) -> Iterable[str]:
    """The command as written, then its flat and canonical forms, nested commands included."""
    yield command
    for tokens in _token_lists(command):
        yield " ".join(tokens)
        yield from canonical_commands(tokens)


def canonical_commands(tokens: Sequence[str]) -> list[str]:
    """Each simple command of ``tokens`` in canonical form (see the module doc)."""
    return [_canonical(words) for words in _simple_commands(tokens) if words]


def fork_bomb(tokens: Sequence[str]) -> str | None:
    """The name of a function defined in ``tokens`` that calls itself at least twice with a
    ``&`` or ``|`` in its body, or None."""
    for index in range(len(tokens)):
        name, body_start = _function_at(tokens, index)
        if name is None:
            continue
        body = _group(tokens, body_start)
        calls = sum(1 for word in body if word == name)
        if calls >= 2 and any(word in ("&", "|", "|&") for word in body):
            return name
    return None


def _token_lists(command: str, depth: int = 0) -> Iterable[list[str]]:
    """The shell tokens of ``command``, then those of each quoted word in it that is itself
    a command line."""
    tokens = _tokens(command)
    yield tokens
    if depth >= _NESTED_DEPTH:
        return
    for word in tokens:
        if len(word) > 1 and any(c in word for c in " \t\n;&|"):
            yield from _token_lists(word, depth + 1)


def _tokens(command: str) -> list[str]:
    text = _LINE_CONTINUATION.sub("", command)
    text = _IFS.sub(" ", text)
    text = _EMPTY_EXPANSION.sub("", text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = False
    lexer.commenters = ""  # a '#' mid-word is not a comment to the shell
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: the shell refuses it too; read it crudely
        flat = re.sub(r"[\"'\\]", "", text)
        return _SPACES.split(flat.strip())


def _simple_commands(tokens: Sequence[str]) -> list[list[str]]:
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS or (token and set(token) <= set(";&|()<>")):
            commands.append([])
        else:
            commands[-1].append(token)
    return commands


def _canonical(words: Sequence[str]) -> str:
    words = list(words)
    while words and (
        ("=" in words[0] and not words[0].startswith("="))  # VAR=value before the program
        or _program(words[0]) in _WRAPPERS
        or (words[0].startswith("-") and len(words) > 1)  # a wrapper's own options
    ):
        words.pop(0)
    if not words:
        return ""
    program = _program(words[0])
    flags: list[str] = []
    operands: list[str] = []
    long_options: list[str] = []
    options_done = False
    for word in words[1:]:
        if options_done or not word.startswith("-") or word == "-":
            operands.append(_path(word))
        elif word == "--":
            options_done = True
        elif word.startswith("--"):
            short = _RM_LONG_FLAGS.get(word) if program == "rm" else None
            if short:
                flags.append(short)
            else:
                long_options.append(word)
        else:
            flags.extend(word[1:])
    cluster = "-" + "".join(dict.fromkeys(flags)) if flags else ""
    return " ".join(part for part in (program, cluster, *operands, *long_options) if part)


def _program(word: str) -> str:
    return word.lstrip("\\").rsplit("/", 1)[-1] or word


def _path(word: str) -> str:
    """``//``, ``/*``, ``/.`` and ``/./`` read ``/``; other paths lose a trailing ``/``."""
    if not word.startswith("/"):
        return word
    path = re.sub(r"/+", "/", word)
    path = re.sub(r"(/\.)+(?=/|$)", "", path)
    path = re.sub(r"/\*$", "/", path)
    path = path.rstrip("/") or "/"
    return path


def _function_at(tokens: Sequence[str], index: int) -> tuple[str | None, int]:
    """A function definition starting at ``index`` (``name() {``, ``name ( ) (``,
    ``function name {``): its name and where its body starts, or ``(None, 0)``."""
    if tokens[index] == "function" and index + 1 < len(tokens):
        name, at = tokens[index + 1], index + 2
        if tokens[at : at + 2] == ["(", ")"]:
            at += 2
        return name, at
    if tokens[index : index + 1] == ["()"] or tokens[index + 1 : index + 3] != ["(", ")"]:
        if tokens[index + 1 : index + 2] == ["()"]:  # shlex may join "()"
            return tokens[index], index + 2
        return None, 0
    return tokens[index], index + 3


def _group(tokens: Sequence[str], start: int) -> list[str]:
    """The tokens of the ``{ ... }`` or ``( ... )`` group starting at ``start``."""
    if start >= len(tokens) or tokens[start] not in ("{", "("):
        return []
    opening = tokens[start]
    closing = "}" if opening == "{" else ")"
    depth = 0
    for end in range(start, len(tokens)):
        if tokens[end] == opening:
            depth += 1
        elif tokens[end] == closing:
            depth -= 1
            if depth == 0:
                return list(tokens[start + 1 : end])
    return list(tokens[start + 1 :])


@lru_cache(maxsize=64)
def _deny_regex(pattern: str) -> Any:
    """RE2, so that a long command cannot make a pattern backtrack; a configured pattern
    that RE2 cannot run falls back to ``re`` (the operator wrote it)."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = False
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return re.compile(pattern, re.IGNORECASE)
