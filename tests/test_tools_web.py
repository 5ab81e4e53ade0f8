"""web_search and web_fetch against loopback servers, and parallel tool calls through
``Agent.handle`` with the scripted LLM (the overlap is measured at the web server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from claw_worker import constants
from claw_worker.agent import Agent
from claw_worker.config.schema import Config
from claw_worker.contract import InboundMessage, OutboundMessage
from claw_worker.tools import ToolContext, default_tools
from tests import llm_server as llm
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer
from tests.web_servers import BRAVE_KEY, WebServer

PAGE = b"""<!doctype html><html><head><title>Test Page</title>
<style>body { color: red }</style><script>var secret = "js-only";</script></head>
<body><h1>Main Heading</h1><p>First   paragraph with a <a href="/next">link</a>.</p>
<p>Second paragraph.</p><ul><li>one</li><li>two</li></ul>
<noscript>enable js</noscript></body></html>"""


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer(
        pages={
            "/page.html": (200, "text/html; charset=utf-8", PAGE),
            "/plain.txt": (200, "text/plain", b"just text " * 100),
            "/gone": (404, "text/html", b"<h1>Not here</h1>"),
            "/image.png": (200, "image/png", b"\x89PNG\r\n\x1a\n"),
        }
    ).start()
    try:
        yield server
    finally:
        server.stop()


# The loopback web server is a private address: allowed here, refused by default.
LOOPBACK_ALLOWED = {"allowed_hosts": ["127.0.0.1"]}


def run(tool: str, args: dict[str, Any], tmp_path: Path, **tools_cfg: Any) -> str:
    tools_cfg["web_fetch"] = {**LOOPBACK_ALLOWED, **tools_cfg.get("web_fetch", {})}
    config = Config.model_validate({"tools": tools_cfg})
    return default_tools(config).run(tool, args, ToolContext(tmp_path, "t:1", config))


# -- web_search --------------------------------------------------------------------------


def test_web_search_brave(web: WebServer, tmp_path: Path) -> None:
    cfg = {"brave_api_key": BRAVE_KEY, "brave_api_base": web.url + "/brave"}
    result = run("web_search", {"query": "clawfleet", "count": 2}, tmp_path, web_search=cfg)
    assert result.splitlines() == [
        "1. clawfleet result 1",  # Brave's <strong> highlighting is stripped
        "   https://example.com/1",
        "   about clawfleet #1",
        "2. clawfleet result 2",
        "   https://example.com/2",
        "   about clawfleet #2",
    ]
    request = web.requests[-1]
    assert request["query"] == {"q": "clawfleet", "count": "2"}
    assert request["headers"]["X-Subscription-Token"] == BRAVE_KEY


def test_web_search_brave_rejected_key(web: WebServer, tmp_path: Path) -> None:
    cfg = {"brave_api_key": "wrong", "brave_api_base": web.url + "/brave"}
    result = run("web_search", {"query": "x"}, tmp_path, web_search=cfg)
    assert result.startswith("Error: search backend answered HTTP 401")


def test_web_search_searxng(web: WebServer, tmp_path: Path) -> None:
    cfg = {"searxng_url": web.url + "/searx/"}
    result = run("web_search", {"query": "fleet"}, tmp_path, web_search=cfg)
    assert result == (
        "1. SearX one\n   https://one.example\n   first\n"
        "2. SearX two\n   https://two.example\n   second"
    )
    assert web.requests[-1]["query"] == {"q": "fleet", "format": "json"}


def test_web_search_not_configured(tmp_path: Path) -> None:
    result = run("web_search", {"query": "x"}, tmp_path)
    assert result.startswith("Error: web_search is not configured: set tools.web_search.")
    half = run("web_search", {"query": "x"}, tmp_path, web_search={"provider": "brave"})
    assert half.startswith("Error: web_search provider is brave but")
    assert run("web_search", {}, tmp_path).startswith(
        "Error: invalid arguments for web_search: query: Field required"
    )


def test_web_search_unreachable(tmp_path: Path) -> None:
    cfg = {"searxng_url": "http://127.0.0.1:9", "timeout_sec": 5}
    result = run("web_search", {"query": "x"}, tmp_path, web_search=cfg)
    assert result.startswith("Error: search request failed: ConnectError")


# -- web_fetch ---------------------------------------------------------------------------


def test_web_fetch_html_to_text(web: WebServer, tmp_path: Path) -> None:
    result = run("web_fetch", {"url": web.url + "/page.html"}, tmp_path)
    assert result == (
        f"URL: {web.url}/page.html\n\n"
        "Title: Test Page\n\n"
        "# Main Heading\n\n"
        f"First paragraph with a link ({web.url}/next).\n\n"
        "Second paragraph.\n\n"
        "- one\n- two"
    )
    assert "js-only" not in result and "color" not in result and "enable js" not in result


def test_web_fetch_caps_and_plain_text(web: WebServer, tmp_path: Path) -> None:
    result = run("web_fetch", {"url": web.url + "/plain.txt", "max_chars": 100}, tmp_path)
    assert result.endswith("\n... [truncated at 100 characters]")
    assert result.count("just text") == 10
    # The configured cap wins over a larger request.
    small = run(
        "web_fetch", {"url": web.url + "/plain.txt", "max_chars": 5000}, tmp_path,
        web_fetch={"max_chars": 200},
    )  # fmt: skip
    assert small.endswith("[truncated at 200 characters]")


def test_web_fetch_errors(web: WebServer, tmp_path: Path) -> None:
    gone = run("web_fetch", {"url": web.url + "/gone"}, tmp_path)
    assert gone == f"Error: HTTP 404 Not Found from {web.url}/gone"
    image = run("web_fetch", {"url": web.url + "/image.png"}, tmp_path)
    assert image == f"Error: {web.url}/image.png is image/png, not text; not shown"
    for url in ("file:///etc/passwd", "ftp://example.com/x", "gopher://x", "/etc/passwd"):
        refused = run("web_fetch", {"url": url}, tmp_path)
        assert refused.startswith(f"Error: refusing {url!r}: only http:// and https://"), url
    assert run("web_fetch", {"url": ""}, tmp_path).startswith("Error: invalid arguments")


def test_web_fetch_refuses_private_addresses_by_default(web: WebServer, tmp_path: Path) -> None:
    port = web.url.rsplit(":", 1)[1]
    default = {"allowed_hosts": []}
    for url in (
        web.url + "/page.html",
        f"http://localhost:{port}/page.html",  # a name resolving to loopback
        f"http://[::ffff:127.0.0.1]:{port}/",  # loopback in IPv6 clothing
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.1.2.3/",
        "http://[::1]/",
    ):
        result = run("web_fetch", {"url": url}, tmp_path, web_fetch=default)
        assert result.startswith("Error: refusing to fetch from "), (url, result)
        assert "tools.web_fetch.allowed_hosts" in result
    assert not any(r["path"] == "/page.html" for r in web.requests), "nothing was fetched"

    # An allowed host redirecting to one that is not is refused at the redirect.
    inward = f"http://localhost:{port}/redirect?to={web.url}/page.html"
    only_name = {"allowed_hosts": ["localhost"]}
    result = run("web_fetch", {"url": inward}, tmp_path, web_fetch=only_name)
    assert result.startswith("Error: refusing to fetch from 127.0.0.1"), result
    both = {"allowed_hosts": ["localhost", "127.0.0.0/8"]}
    allowed = run("web_fetch", {"url": inward}, tmp_path, web_fetch=both)
    assert allowed.startswith(f"URL: {web.url}/page.html"), allowed
    off = {"allowed_hosts": [], "block_private_addresses": False}
    assert "Main Heading" in run(
        "web_fetch", {"url": web.url + "/page.html"}, tmp_path, web_fetch=off
    )


def test_web_fetch_timeout(web: WebServer, tmp_path: Path) -> None:
    web.slow_sec = 3
    result = run(
        "web_fetch", {"url": web.url + "/slow/t"}, tmp_path, web_fetch={"timeout_sec": 0.3}
    )
    assert result == f"Error: fetching {web.url}/slow/t timed out after 0.3s"


# -- through the agent: parallel calls, and message with the fleet's redis -----------------


def agent_config(
    llm_server: LLMServer, redis_server: RedisServer, web: WebServer, **control: Any
) -> Config:
    return Config.model_validate(
        {
            "providers": {"proxy": {"api_base": llm_server.base_url, "models": ["m"]}},
            "redis": {"url": redis_server.url},
            "agents": {"defaults": {"runtime_control": control}},
            "channels": {"telegram": {"enabled": True, "token": "123:abc"}},  # message delivers
            # Any request to /slow/<id>/search is SearXNG-shaped, so web_search can be slow too.
            "tools": {
                "web_search": {"searxng_url": web.url + "/slow/search-c"},
                "web_fetch": LOOPBACK_ALLOWED,
            },
        }
    )


def msg(text: str) -> InboundMessage:
    return InboundMessage(channel="test", chat_id="1", sender_id="u", text=text)


def tool_results(llm_server: LLMServer) -> list[str]:
    return [m["content"] for m in llm_server.requests[-1]["messages"] if m["role"] == "tool"]


def test_parallel_safe_calls_overlap_and_others_run_alone(
    claw_home: ClawHome,
    redis_server: RedisServer,
    llm_server: LLMServer,
    web: WebServer,
) -> None:
    config = agent_config(
        llm_server, redis_server, web,
        tool_parallel_safe_names=["web_fetch"], tool_max_parallel_calls=2,
    )  # fmt: skip
    llm_server.push(
        llm.tool_calls(
            [
                ("web_fetch", {"url": web.url + "/slow/a"}),
                ("web_fetch", {"url": web.url + "/slow/b"}),
                ("web_search", {"query": "c"}),  # not parallel-safe in this config
                ("web_fetch", {"url": web.url + "/slow/d"}),
            ]
        )
    )
    llm_server.reply("all fetched")

    reply = Agent(config, redis_server.client()).handle(msg("fetch them"))

    assert (reply.text, reply.tool_steps) == ("all fetched", 4)
    a, b, c, d = (web.interval(name) for name in ("a", "b", "search-c", "d"))
    assert a.start < b.end and b.start < a.end, "the two safe calls did not overlap"
    assert c.start >= max(a.end, b.end), "the unsafe call started while safe calls ran"
    assert d.start >= c.end, "a safe call started while the unsafe call ran"
    # Results are in the calls' order, whatever order they finished in.
    assert tool_results(llm_server) == [
        "URL: " + web.url + "/slow/a\n\nslow a",
        "URL: " + web.url + "/slow/b\n\nslow b",
        "1. search-c\n   https://search-c.example",
        "URL: " + web.url + "/slow/d\n\nslow d",
    ]


def test_parallel_width_is_capped(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer, web: WebServer
) -> None:
    config = agent_config(
        llm_server, redis_server, web,
        tool_parallel_safe_names=["web_fetch"], tool_max_parallel_calls=2,
    )  # fmt: skip
    web.slow_sec = 0.3
    calls = [("web_fetch", {"url": f"{web.url}/slow/{n}"}) for n in "pqrs"]
    llm_server.push(llm.tool_calls(calls))
    llm_server.reply("done")

    assert Agent(config, redis_server.client()).handle(msg("go")).tool_steps == 4
    assert web.max_in_flight == 2
    assert [r.rsplit(" ", 1)[-1] for r in tool_results(llm_server)] == list("pqrs")


def test_unsafe_calls_run_one_at_a_time(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer, web: WebServer
) -> None:
    config = agent_config(llm_server, redis_server, web, tool_parallel_safe_names=[])
    web.slow_sec = 0.2
    llm_server.push(llm.tool_calls([("web_fetch", {"url": f"{web.url}/slow/{n}"}) for n in "xy"]))
    llm_server.reply("done")

    Agent(config, redis_server.client()).handle(msg("go"))
    assert web.max_in_flight == 1
    assert web.interval("y").start >= web.interval("x").end


def test_message_tool_through_the_agent(
    claw_home: ClawHome, redis_server: RedisServer, llm_server: LLMServer, web: WebServer
) -> None:
    client: redis.Redis = redis_server.client()
    llm_server.reply_tool_call("message", {"channel": "telegram", "chat_id": "99", "text": "ping"})
    llm_server.reply("sent")

    reply = Agent(agent_config(llm_server, redis_server, web), client).handle(msg("tell 99"))

    assert reply.text == "sent"
    assert tool_results(llm_server) == ["Message sent to telegram:99 (4 chars)"]
    [(_, fields)] = client.xrange(constants.OUTBOUND_STREAM)
    sent = OutboundMessage.model_validate_json(fields["data"])
    assert (sent.channel, sent.chat_id, sent.text) == ("telegram", "99", "ping")
    assert sent.metadata["from_session"] == "test:1"
