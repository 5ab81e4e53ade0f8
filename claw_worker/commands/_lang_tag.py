"""Language tags for /lang: a BCP-47-like tag whose language is a known ISO 639 code.

``language[-Script][-REGION]``: the language is an ISO 639-1 code or one of a few ISO 639-3
codes people use for a language without one (yue, fil, ...); the script is four letters
(Hans, Latn), the region two letters or three digits (CN, 419). Variants and extensions are
refused: the tag goes into the system prompt, and "xx-nonsense" is not a language.
"""

from __future__ import annotations

import re

# ISO 639-1 (every assigned two-letter code).
_ISO_639_1_CODES = """
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu
    cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi
    ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks
    ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl
    nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl
    sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve
    vi vo wa wo xh yi yo za zh zu
"""
# Three-letter codes for languages with no two-letter one (or commonly written this way).
_ISO_639_3_CODES = """
    ast bho ceb ckb cmn fil gsw hak haw hmn hsn ilo kok lij mai min nan nds pam sco scn szl
    wuu yue zza
"""
_LANGUAGES = frozenset(_ISO_639_1_CODES.split()) | frozenset(_ISO_639_3_CODES.split())
_TAG = re.compile(r"([A-Za-z]{2,3})(?:-([A-Za-z]{4}))?(?:-([A-Za-z]{2}|[0-9]{3}))?")


def normalize_lang_tag(text: str) -> str | None:
    """The tag in its usual case (``zh-hant-tw`` -> ``zh-Hant-TW``), or None if it is not
    a known language with an optional script and region."""
    match = _TAG.fullmatch(text.replace("_", "-"))
    if match is None:
        return None
    language, script, region = match.groups()
    language = language.lower()
    if language not in _LANGUAGES:
        return None
    parts = [language]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)
