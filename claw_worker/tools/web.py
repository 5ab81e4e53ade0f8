"""Web tools: ``web_search`` (Brave Search API or a SearXNG instance) and ``web_fetch``.

Base URLs come from ``tools.web_search`` / ``tools.web_fetch`` in the config, so a test (or
a private deployment) can point them anywhere. Both only speak http(s), cap what they
download and return a clear ``Error:`` for anything that is not a usable answer.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from claw_worker.config.schema import WebFetchConfig, WebSearchConfig
from claw_worker.http_body import ACCEPT_ENCODING, BodyError, read_limited
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams
from claw_worker.tools.html_text import html_to_text
from claw_worker.tools.url_guard import UrlGuard

USER_AGENT = "clawfleet/0.1 (+https://github.com/clawfleet)"
_TAG = re.compile(r"<[^>]+>")


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(10.0, seconds))


def _get_json(url: str, params: dict[str, Any], headers: dict[str, str], timeout: float) -> Any:
    try:
        with httpx.Client(timeout=_timeout(timeout), headers={"User-Agent": USER_AGENT}) as c:
            response = c.get(url, params=params, headers=headers)
    except httpx.TimeoutException as exc:
        raise ToolError(f"search timed out after {timeout:g}s ({url})") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"search request failed: {type(exc).__name__}: {exc}") from exc
    if not response.is_success:
        raise ToolError(
            f"search backend answered HTTP {response.status_code}: {response.text[:200]}"
        )
    try:
        return response.json()
    except ValueError as exc:
        raise ToolError("search backend did not answer JSON") from exc


class WebSearchParams(ToolParams):
    query: str = Field(min_length=1, max_length=400, description="What to search for.")
    count: int | None = Field(None, ge=1, le=20, description="How many results (default 5).")


class WebSearchTool(Tool[WebSearchParams]):
    name = "web_search"
    description = "Search the web; returns titles, URLs and snippets."
    Params = WebSearchParams

    def execute(self, params: WebSearchParams, ctx: ToolContext) -> str:
        cfg = ctx.config.tools.web_search
        count = params.count or cfg.max_results
        provider = _provider(cfg)
        if provider == "brave":
            results = _brave(cfg, params.query, count)
        else:
            results = _searxng(cfg, params.query, count)
        if not results:
            return f"No results for {params.query!r}"
        lines = []
        for i, (title, url, snippet) in enumerate(results[:count], 1):
            lines.append(f"{i}. {title}\n   {url}" + (f"\n   {snippet}" if snippet else ""))
        return "\n".join(lines)


def _provider(cfg: WebSearchConfig) -> str:
    if cfg.provider == "brave" and not cfg.brave_api_key:
        raise ToolError("web_search provider is brave but tools.web_search.brave_api_key is empty")
    if cfg.provider == "searxng" and not cfg.searxng_url:
        raise ToolError("web_search provider is searxng but tools.web_search.searxng_url is empty")
    if cfg.provider:
        return cfg.provider
    if cfg.brave_api_key:
        return "brave"
    if cfg.searxng_url:
        return "searxng"
    raise ToolError(
        "web_search is not configured: set tools.web_search.brave_api_key (Brave Search API) "
        "or tools.web_search.searxng_url (a SearXNG instance)"
    )


def _clean(text: Any) -> str:
    return _TAG.sub("", str(text or "")).strip()


def _brave(cfg: WebSearchConfig, query: str, count: int) -> list[tuple[str, str, str]]:
    data = _get_json(
        cfg.brave_api_base.rstrip("/") + "/res/v1/web/search",
        {"q": query, "count": count},
        {"Accept": "application/json", "X-Subscription-Token": cfg.brave_api_key},
        cfg.timeout_sec,
    )
    items = (data.get("web") or {}).get("results") or [] if isinstance(data, dict) else []
    return [
        (_clean(r.get("title")), str(r.get("url", "")), _clean(r.get("description")))
        for r in items
        if isinstance(r, dict)
    ]


def _searxng(cfg: WebSearchConfig, query: str, count: int) -> list[tuple[str, str, str]]:
    data = _get_json(
        cfg.searxng_url.rstrip("/") + "/search",
        {"q": query, "format": "json"},
        {"Accept": "application/json"},
        cfg.timeout_sec,
    )
    items = data.get("results") or [] if isinstance(data, dict) else []
    return [
        (_clean(r.get("title")), str(r.get("url", "")), _clean(r.get("content")))
        for r in items
        if isinstance(r, dict)
    ]


class WebFetchParams(ToolParams):
    url: str = Field(min_length=1, max_length=4000, description="An http:// or https:// URL.")
    max_chars: int | None = Field(
        None, ge=100, description="Cap on the returned text (capped by the configured limit)."
    )


class WebFetchTool(Tool[WebFetchParams]):
    name = "web_fetch"
    description = (
        "Fetch a web page and return it as readable text (HTML converted; JSON and plain text "
        "as is)."
    )
    Params = WebFetchParams

    def execute(self, params: WebFetchParams, ctx: ToolContext) -> str:
        cfg = ctx.config.tools.web_fetch
        parts = urlsplit(params.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ToolError(
                f"refusing {params.url!r}: only http:// and https:// URLs can be fetched"
            )
        body, ctype, final_url = _download(params.url, cfg)
        encoding = _charset(ctype) or "utf-8"
        raw = body.decode(encoding, errors="replace")
        if "html" in ctype or (not ctype and raw.lstrip()[:15].lower().startswith("<!doctype")):
            text = html_to_text(raw, final_url)
        elif ctype.startswith("text/") or "json" in ctype or "xml" in ctype or not ctype:
            text = raw
        else:
            raise ToolError(f"{params.url} is {ctype}, not text; not shown")
        limit = min(params.max_chars or cfg.max_chars, cfg.max_chars)
        if len(text) > limit:
            text = text[:limit] + f"\n... [truncated at {limit} characters]"
        return f"URL: {final_url}\n\n{text}"


def _download(url: str, cfg: WebFetchConfig) -> tuple[bytes, str, str]:
    """Body (at most ``max_bytes``), content type and final URL after redirects."""
    max_bytes, timeout = cfg.max_bytes, cfg.timeout_sec
    guard = UrlGuard(cfg.allowed_hosts, block_private=cfg.block_private_addresses)

    def check(request: httpx.Request) -> None:  # every hop, redirects included
        guard.check(
            request.url.host, request.url.port or (443 if request.url.scheme == "https" else 80)
        )

    try:
        with (
            httpx.Client(
                timeout=_timeout(timeout),
                follow_redirects=True,
                max_redirects=5,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
                event_hooks={"request": [check]},
            ) as client,
            client.stream("GET", url) as response,
        ):
            if not response.is_success:
                raise ToolError(f"HTTP {response.status_code} {response.reason_phrase} from {url}")
            data = read_limited(response, max_bytes)  # decoded within the cap: no bombs
            ctype = response.headers.get("content-type", "").lower()
            return data, ctype, str(response.url)
    except BodyError as exc:
        raise ToolError(f"fetching {url} failed: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise ToolError(f"fetching {url} timed out after {timeout:g}s") from exc
    except (httpx.InvalidURL, UnicodeError) as exc:  # not HTTPErrors: "0177.0.0.1", a bad
        # port, punycode that decodes to nothing valid (IDNA's UnicodeError), ...
        raise ToolError(f"refusing {url!r}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc


def _charset(ctype: str) -> str | None:
    match = re.search(r"charset=([\w-]+)", ctype)
    if not match:
        return None
    try:
        "".encode(match.group(1))
    except LookupError:
        return None
    return match.group(1)
