"""HTML to readable plain text with the stdlib ``html.parser`` (no extra dependency).

Keeps what helps a model read a page: headings (as ``#`` lines), paragraph and line
breaks, list items, and links as ``text (url)``. Drops scripts, styles and other
non-content elements entirely.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

_DROP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe"})
_BLOCK = frozenset(
    {"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "ul",
     "ol", "table", "tr", "blockquote", "pre", "form", "figure", "dl", "dt", "dd", "hr"}
)  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _TextExtractor(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.parts: list[str] = []
        self.title = ""
        self._drop_depth = 0
        self._in_title = False
        self._pre_depth = 0
        self._href: str | None = None
        self._link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _DROP:
            self._drop_depth += 1
            return
        if self._drop_depth:
            return
        if tag in _HEADINGS:
            self.parts.append("\n\n" + "#" * _HEADINGS[tag] + " ")
        elif tag in _BLOCK:
            self.parts.append("\n\n")
            if tag == "pre":
                self._pre_depth += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" | ")
        elif tag == "a":
            href = dict(attrs).get("href")
            if href and not href.startswith(("javascript:", "#")):
                self._href = urljoin(self.base_url, href)
                self._link_text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _DROP:
            self._drop_depth = max(0, self._drop_depth - 1)
            return
        if self._drop_depth:
            return
        if tag in _HEADINGS or tag in _BLOCK:
            self.parts.append("\n\n")
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)
        elif tag == "a" and self._href is not None:
            text = "".join(self._link_text).strip()
            # Naming the URL only when it adds something: a bare URL link is already shown.
            if text and text != self._href:
                self.parts.append(f" ({self._href})")
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._drop_depth:
            return
        if not self._pre_depth:
            data = re.sub(r"\s+", " ", data)
        if self._href is not None:
            self._link_text.append(data)
        self.parts.append(data)


def html_to_text(html: str, base_url: str = "") -> str:
    """Readable text of an HTML document; the ``<title>`` (if any) as the first line."""
    parser = _TextExtractor(base_url)
    parser.feed(html)
    parser.close()
    body = "".join(parser.parts)
    lines = [line.strip() if not line.startswith("    ") else line for line in body.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = re.sub(r"\s+", " ", parser.title).strip()
    if title and not text.startswith(f"# {title}"):
        text = f"Title: {title}\n\n{text}"
    return text
