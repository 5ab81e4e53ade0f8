"""The model's Markdown as Telegram MarkdownV2: what Telegram can show (code blocks, inline
code, links, bold, italic, strikethrough; headings as bold) is kept, everything else is
escaped so it shows as written.

MarkdownV2 refuses a message with any of ``_*[]()~`>#+-=|{}.!`` unescaped outside an
entity; inside code only ````` and ``\\`` are escaped, inside a link's URL only ``)`` and
``\\`` (python-telegram-bot's ``helpers.escape_markdown`` knows these rules). A text this
gets wrong is refused by Telegram and sent again as plain text by the adapter.
"""

from __future__ import annotations

import re

from telegram.helpers import escape_markdown

_TOKEN = re.compile(
    r"^(?P<fence>```)(?P<lang>[\w+-]*)[ \t]*\n(?P<pre>.*?)\n?^```[ \t]*$"
    r"|`(?P<code>[^`\n]+)`"
    r"|\[(?P<label>[^\]\n]+)\]\((?P<url>(?:https?://|tg://|mailto:)[^\s)]+)\)"
    r"|\*\*(?P<bold>\S(?:[^\n]*?\S)?)\*\*"
    r"|__(?P<bold2>\S(?:[^\n]*?\S)?)__"
    r"|~~(?P<strike>\S(?:[^\n]*?\S)?)~~"
    r"|(?<![\w*\\])\*(?P<italic>[^\s*](?:[^*\n]*?[^\s*])?)\*(?![\w*])"
    r"|(?<![\w\\])_(?P<italic2>[^\s_](?:[^_\n]*?[^\s_])?)_(?!\w)"
    r"|^[ \t]{0,3}\#{1,6}[ \t]+(?P<heading>[^\n]+?)[ \t#]*$",
    re.MULTILINE | re.DOTALL,
)


def _text(value: str) -> str:
    return escape_markdown(value, version=2)


def _render(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups["fence"]:
        return f"```{groups['lang']}\n{escape_markdown(groups['pre'], 2, 'pre')}\n```"
    if groups["code"] is not None:
        return f"`{escape_markdown(groups['code'], 2, 'code')}`"
    if groups["url"] is not None:
        url = escape_markdown(groups["url"], 2, "text_link")
        return f"[{_text(groups['label'])}]({url})"
    for name, marker in (("bold", "*"), ("bold2", "*"), ("heading", "*"), ("strike", "~"),
                         ("italic", "_"), ("italic2", "_")):  # fmt: skip
        if groups[name] is not None:
            return f"{marker}{_text(groups[name])}{marker}"
    return _text(match.group(0))  # not reached: every branch names a group


def utf16_length(text: str) -> int:
    """``text``'s length as Telegram counts it (its 4096 limit, entity offsets): UTF-16 code
    units, two for a character outside the BMP (most emoji)."""
    return len(text.encode("utf-16-le")) // 2


def to_markdown_v2(text: str) -> str:
    out: list[str] = []
    at = 0
    for match in _TOKEN.finditer(text):
        out.append(_text(text[at : match.start()]))
        out.append(_render(match))
        at = match.end()
    out.append(_text(text[at:]))
    return "".join(out)
