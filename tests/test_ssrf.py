"""The campaign's SSRF part: ``web_fetch`` and skill downloads against this host, its private
network and the cloud metadata address, in every spelling, directly and through redirects.

A loopback web server stands in for the internal service: the targets on its port would
reach it if the guard let them, so an escape shows as a request in its log (the other
targets have no server; an escape there shows as anything but the guard's refusal). The
allow-lists (``tools.web_fetch.allowed_hosts``, ``skills.allowed_hosts``) let the tests
serve the allowed side from loopback.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claw_worker.config.schema import Config, SkillsConfig
from claw_worker.skills.github import download, parse_spec
from claw_worker.skills.skillfile import SkillError
from claw_worker.tools import ToolContext, default_tools
from claw_worker.tools.url_guard import UrlGuard
from tests.campaign import record
from tests.codeload_server import CodeloadServer
from tests.web_servers import WebServer

SECRET_PAGE = b"internal service: the fleet's secrets"


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer(pages={"/secret": (200, "text/plain", SECRET_PAGE)}).start()
    try:
        yield server
    finally:
        server.stop()


def targets(port: int) -> list[str]:
    """Off-limits URLs: ``port`` is the loopback web server's (an escape would reach it)."""
    return [
        f"http://127.0.0.1:{port}/secret",
        f"http://localhost:{port}/secret",  # a name resolving to loopback
        f"http://LOCALHOST.:{port}/secret",  # case and the root dot
        f"http://127.0.0.1.:{port}/secret",
        f"http://127.1:{port}/secret",  # inet_aton's short form
        f"http://0.0.0.0:{port}/secret",  # Linux connects it to loopback
        f"http://[::1]:{port}/secret",
        f"http://[::]:{port}/secret",
        f"http://[::ffff:127.0.0.1]:{port}/secret",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{port}/secret",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/secret",
        # IPv6 forms that embed an IPv4 address, which Python 3.11 calls global:
        f"http://[::7f00:1]:{port}/secret",  # IPv4-compatible (::/96)
        f"http://[::127.0.0.1]:{port}/secret",
        f"http://[64:ff9b::7f00:1]:{port}/secret",  # NAT64 (64:ff9b::/96)
        f"http://[64:ff9b::169.254.169.254]:{port}/secret",
        f"http://[64:ff9b:1::a00:1]:{port}/secret",  # local-use NAT64 (64:ff9b:1::/48)
        f"http://[2002:7f00:1::]:{port}/secret",  # 6to4 (2002::/16)
        f"http://[2002:a9fe:a9fe::1]:{port}/secret",
        f"http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/secret",  # Teredo, client 127.0.0.1
        f"http://2130706433:{port}/secret",  # decimal
        f"http://0x7f000001:{port}/secret",  # hex
        f"http://0x7f.1:{port}/secret",
        f"http://0177.0.0.1:{port}/secret",  # octal
        f"http://017700000001:{port}/secret",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://2852039166/latest/meta-data/",  # 169.254.169.254 in decimal
        "http://[fe80::1]/",  # link-local IPv6
        "http://10.0.0.1/",
        "http://10.255.255.254:6379/",  # a Redis on the LAN
        "http://172.16.0.1/",
        "http://172.31.255.254/",
        "http://192.168.0.1/",
        "http://192.168.255.254/",
        "http://100.64.0.1/",  # carrier-grade NAT: not public either
        "http://[fd00::1]/",
        "http://[fd12:3456:789a::1]/",
    ]


def fetch(url: str, tmp_path: Path, **web_fetch: Any) -> str:
    config = Config.model_validate({"tools": {"web_fetch": web_fetch}})
    return default_tools(config).run(
        "web_fetch", {"url": url}, ToolContext(tmp_path, "t:1", config)
    )


def refused(result: str) -> bool:
    """The guard's refusal: the address (or an unparsable spelling of one), or no such name."""
    return result.startswith(("Error: refusing ", "Error: cannot resolve host"))


def test_web_fetch_refuses_private_loopback_and_link_local(web: WebServer, tmp_path: Path) -> None:
    port = int(web.url.rsplit(":", 1)[1])
    outcomes = {url: fetch(url, tmp_path) for url in targets(port)}
    # Redirects from an allowed host (the name localhost only) to ones that are not.
    hop = f"http://localhost:{port}/redirect?to="
    onward = [url for url in targets(port) if "localhost" not in url.lower()]
    for url in onward:
        outcomes[hop + url] = fetch(hop + url, tmp_path, allowed_hosts=["localhost"])
    reached = [r for r in web.requests if r["path"] == "/secret"]
    leaked = [url for url, result in outcomes.items() if SECRET_PAGE.decode() in result]
    # A redirect whose Location httpx cannot even parse (0177.0.0.1) fails as a clean
    # "fetching ... failed" error: refused too, just not by the guard's sentence.
    not_refused = {url: result for url, result in outcomes.items() if not refused(result)
                   and not (url.startswith(hop) and "Invalid URL in location" in result)}  # fmt: skip
    record("ssrf: web_fetch", tried=len(outcomes), rejected=len(outcomes) - len(not_refused),
           escapes=len(reached) + len(leaked))  # fmt: skip
    assert not reached and not leaked, "the internal service was reached"
    assert not not_refused, not_refused
    direct = outcomes[f"http://127.0.0.1:{port}/secret"]
    assert "tools.web_fetch.allowed_hosts" in direct, direct  # says how to allow it
    # The redirects did reach the allowed first hop: the refusal is at the second.
    assert sum(r["path"] == "/redirect" for r in web.requests) == len(onward)


def test_a_redirect_to_a_host_httpx_cannot_decode_is_refused(
    web: WebServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``Location: http://xn--a.example/`` (punycode that decodes to a control character):
    httpx raises IDNA's UnicodeError, no HTTPError or InvalidURL; it was "web_fetch failed"
    with a traceback logged as a tool bug."""
    port = int(web.url.rsplit(":", 1)[1])
    hop = f"http://localhost:{port}/redirect?to="
    with caplog.at_level(logging.ERROR):
        result = fetch(hop + "http://xn--a.example/", tmp_path, allowed_hosts=["localhost"])
    assert result.startswith("Error: refusing "), result
    assert not [r for r in caplog.records if r.exc_info], "logged as a tool bug"


def test_the_allow_list_lets_one_through(web: WebServer, tmp_path: Path) -> None:
    port = int(web.url.rsplit(":", 1)[1])
    allowed = fetch(f"http://127.0.0.1:{port}/secret", tmp_path, allowed_hosts=["127.0.0.0/8"])
    assert allowed.startswith(f"URL: http://127.0.0.1:{port}/secret"), allowed
    assert SECRET_PAGE.decode() in allowed
    # Allowing the network does not allow the metadata address or the LAN.
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"):
        assert refused(fetch(url, tmp_path, allowed_hosts=["127.0.0.0/8"])), url


def test_public_addresses_in_ipv6_forms_pass() -> None:
    """The embedded address decides: a public one in the same forms is not refused."""
    guard = UrlGuard([])
    for host in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"):
        guard.check(host, 80)  # raises ToolError if refused
    # The allow-list matches the embedded address too.
    UrlGuard(["127.0.0.0/8"]).check("64:ff9b::7f00:1", 80)


# -- skill downloads ----------------------------------------------------------------------


def skills_config(base: str, **extra: Any) -> SkillsConfig:
    return SkillsConfig.model_validate({"archive_base": base, "timeout_sec": 5, **extra})


def try_download(spec: str, config: SkillsConfig) -> tuple[str, bytes]:
    out = io.BytesIO()
    try:
        download(parse_spec(spec), config, out)
    except SkillError as exc:
        return str(exc), out.getvalue()
    return "", out.getvalue()


def test_skill_downloads_refuse_private_addresses(codeload: CodeloadServer, web: WebServer) -> None:
    """The archive host (archive_base, chosen by the config's writer) is trusted; a redirect
    from it must not lead to this host's other services, the LAN or the metadata address.
    codeload follows only https or archive_base's origin, so the redirects are https:// (no
    server answers those; the guard must refuse them before any connection)."""
    port = int(web.url.rsplit(":", 1)[1])
    https_targets = [url.replace("http://", "https://", 1) for url in targets(port)]
    outcomes: dict[str, str] = {}
    for number, target in enumerate(https_targets):
        codeload.redirects[f"/acme/r{number}/tar.gz/main"] = target
        error, data = try_download(f"acme/r{number}/skills/x@main", skills_config(codeload.url))
        outcomes[target] = error if not data else "downloaded"
    reached = [r for r in web.requests if r["path"] == "/secret"]
    downloaded = [t for t, e in outcomes.items() if e == "downloaded"]
    # httpx itself refuses a Location it cannot parse (0177.0.0.1): a clean error too.
    not_refused = {t: e for t, e in outcomes.items()
                   if "not downloading" not in e and "Invalid URL in location" not in e}  # fmt: skip
    record("ssrf: skill download", tried=len(outcomes), rejected=len(outcomes) - len(not_refused),
           escapes=len(reached) + len(downloaded))  # fmt: skip
    assert not reached and not downloaded
    assert not not_refused, not_refused
    first = outcomes[https_targets[0]]
    assert "skills.allowed_hosts" in first and "127.0.0.1" in first, first


def test_skill_download_allow_list(codeload: CodeloadServer) -> None:
    entries = [("dir", ""), ("file", "SKILL.md", "---\nname: x\ndescription: y\n---\n")]
    codeload.add("acme", "ok", "main", entries)
    # archive_base's own host (loopback here) is allowed without listing it.
    error, data = try_download("acme/ok@main", skills_config(codeload.url))
    assert not error and data == codeload.archives[("acme", "ok", "main")], error
    # A redirect to the same origin stays allowed; off that origin, only via the list.
    codeload.redirects["/acme/moved/tar.gz/main"] = codeload.url + "/acme/ok/tar.gz/main"
    error, data = try_download("acme/moved@main", skills_config(codeload.url))
    assert not error and data, error
    port = codeload.url.rsplit(":", 1)[1]
    codeload.redirects["/acme/away/tar.gz/main"] = f"https://10.0.0.1:{port}/a.tar.gz"
    error, _ = try_download("acme/away@main", skills_config(codeload.url))
    assert "not downloading https://10.0.0.1" in error and "skills.allowed_hosts" in error
    listed = skills_config(codeload.url, allowed_hosts=["10.0.0.0/8"], timeout_sec=0.5)
    error, _ = try_download("acme/away@main", listed)
    assert "not downloading" not in error, error  # allowed: it tried (and found no server)
