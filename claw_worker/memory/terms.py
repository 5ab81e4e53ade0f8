"""How text becomes index terms and queries: unicode61 words, and CJK as bigrams.

Chinese, Japanese and Korean are written without spaces between words, so unicode61 alone
would make a whole run of them one token. Such runs are indexed as overlapping character
bigrams (the approach of Lucene's CJKAnalyzer; SQLite's trigram tokenizer cannot match
one- or two-character terms), and queries are cut the same way.
"""

from __future__ import annotations

import re

MAX_QUERY_TERMS = 32  # words, or bigrams: n - 1 for a run of n CJK characters
_TERM = re.compile(r"\w+", re.UNICODE)

# Han (with 々 and 〇), kana (without the middle dot ・) and hangul, BMP and beyond.
_CJK = (
    "\u1100-\u11ff\u3005\u3007\u3040-\u309f\u30a0-\u30fa\u30fc-\u30ff\u3130-\u318f"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\uff66-\uff9f\U00020000-\U0003134f"
)
_CJK_RUN = re.compile(f"[{_CJK}]+")
_SEP = "\u200b"  # zero-width space: unicode61 splits on it, and it is invisible anyway
_SEGMENTED_RUN = re.compile(f"[{_CJK}]+(?:{_SEP}[{_CJK}]+)*")


def has_cjk(text: str) -> bool:
    return _CJK_RUN.search(text) is not None


def bigrams(run: str) -> list[str]:
    """AB BC CD D for ABCD: each character starts exactly one token, so a one-character
    query is the prefix query ``"X"*`` and counts every occurrence once."""
    return [run[i : i + 2] for i in range(len(run))]


def segment(text: str) -> str:
    """Text as indexed: each CJK run as its bigrams, joined and set apart by U+200B.

    The stored text stays reversible (``restore``), so snippet() still cuts fragments at
    token boundaries and the hits show the original text. U+200B already in the text is
    dropped, and a NUL (a hand-edited file) becomes a space: FTS5's snippet ends at one.
    """
    text = text.replace(_SEP, "").replace("\x00", " ")
    return _CJK_RUN.sub(lambda m: _SEP + _SEP.join(bigrams(m.group())) + _SEP, text)


def restore(text: str) -> str:
    """The original text of ``segment``'s output, or of any fragment of it."""

    def join(match: re.Match[str]) -> str:
        *tokens, last = match.group().split(_SEP)
        return "".join(t[0] for t in tokens) + last

    return _SEGMENTED_RUN.sub(join, text).replace(_SEP, "")


def fts_query(text: str) -> str:
    """User text as a safe FTS5 query: every word quoted (so ``AND``, ``(``, ``"`` and ``*``
    are plain text, never syntax), OR-ed so bm25 ranks by how much of the query matches.
    A CJK run becomes its bigrams (no spaces tell its words apart), one character a prefix.
    """
    terms: dict[str, None] = {}  # in order, each once
    for match in _TERM.finditer(_CJK_RUN.sub(r" \g<0> ", text.lower())):
        word = match.group()
        if not _CJK_RUN.fullmatch(word):
            found = [f'"{word}"']
        elif len(word) == 1:
            found = [f'"{word}"*']
        else:
            # Only as many bigrams as could still be used: a run may be 100,000 long.
            found = [f'"{b}"' for b in bigrams(word[: MAX_QUERY_TERMS + 1])[:-1]]
        for term in found:
            terms.setdefault(term)
            if len(terms) == MAX_QUERY_TERMS:
                # Stop here: a long message (a pasted document asking to "remember") made
                # this loop quadratic, minutes of CPU with the GIL held.
                return " OR ".join(terms)
    return " OR ".join(terms)
