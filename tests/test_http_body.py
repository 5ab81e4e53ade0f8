"""``web_fetch`` against compression bombs and odd encodings from a loopback web server: the
memory a fetch uses stays bounded by ``tools.web_fetch.max_bytes`` whatever the server sends
(measured as the peak RSS of a worker-like process of its own), stacked gzip and both
spellings of deflate are decoded, and encodings that cannot be bounded are refused."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from claw_worker.config.schema import Config
from claw_worker.tools import ToolContext, default_tools
from tests.campaign import ROOT, record
from tests.web_servers import WebServer

BOMB_MIB = 256  # zeros, gzipped twice: about 0.5 KB on the wire
MAX_BYTES = 1024 * 1024
TEXT = b"clawfleet " * 1000  # under the registry's cap on a tool result


@cache
def bomb() -> bytes:
    once = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    inner = b"".join(once.compress(zeros) for _ in range(BOMB_MIB)) + once.flush()
    return gzip.compress(inner, 9)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


PAGES: dict[str, tuple[bytes, str]] = {  # path: (body, Content-Encoding)
    "/bomb": (b"", "gzip, gzip"),  # filled in by the fixture (built once per process)
    "/gzip2": (gzip.compress(gzip.compress(TEXT)), "gzip, gzip"),
    "/deflate": (zlib.compress(TEXT), "deflate"),
    "/raw-deflate": (raw_deflate(TEXT), "deflate"),
    "/identity": (TEXT, "identity"),
    "/br": (b"\x1b\x00\x00", "br"),
    "/gzip3": (gzip.compress(gzip.compress(gzip.compress(TEXT))), "gzip, gzip, gzip"),
    "/corrupt": (b"not gzip at all", "gzip"),
}


@pytest.fixture
def web() -> Iterator[WebServer]:
    bodies = {**PAGES, "/bomb": (bomb(), "gzip, gzip")}
    server = WebServer(
        pages={path: (200, "text/plain", body) for path, (body, _) in bodies.items()},
        page_headers={path: {"Content-Encoding": enc} for path, (_, enc) in bodies.items()},
    ).start()
    try:
        yield server
    finally:
        server.stop()


def fetch(url: str, tmp_path: Path, **web_fetch: Any) -> str:
    web_fetch = {"allowed_hosts": ["127.0.0.1"], "max_chars": 10**8, **web_fetch}
    config = Config.model_validate({"tools": {"web_fetch": web_fetch}})
    return default_tools(config).run(
        "web_fetch", {"url": url}, ToolContext(tmp_path, "t:1", config)
    )


# A process of its own, so that its peak RSS shows only this fetch (after a warm-up fetch
# has loaded everything it imports).
CHILD = """
import json, resource, sys
from pathlib import Path
from tests.test_http_body import fetch
url, tmp = sys.argv[1], Path(sys.argv[2])
fetch(url.replace("/bomb", "/identity"), tmp, max_bytes={max_bytes})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = fetch(url, tmp, max_bytes={max_bytes})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_kib": after - before, "result": result[:200], "chars": len(result)}}))
"""


def test_a_compression_bomb_is_read_within_max_bytes(web: WebServer, tmp_path: Path) -> None:
    assert len(bomb()) < 4096  # BOMB_MIB MiB of zeros on the wire
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(max_bytes=MAX_BYTES), web.url + "/bomb", tmp_path],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    outcome = json.loads(child.stdout)
    growth_mib = outcome["growth_kib"] / 1024
    # The body is cut at max_bytes (the text is max_bytes zero characters plus the header).
    assert outcome["result"].startswith(f"URL: {web.url}/bomb"), outcome["result"]
    assert outcome["chars"] < MAX_BYTES + 200, outcome["chars"]
    # max_bytes, its decoded text and a few decoder windows: far below the bomb's size.
    escaped = growth_mib > 32
    record("web_fetch: compression bombs", tried=1, rejected=int(not escaped),
           escapes=int(escaped))  # fmt: skip
    assert not escaped, f"the fetch grew the process by {growth_mib:.0f} MiB"


def test_stacked_and_both_deflates_are_decoded(web: WebServer, tmp_path: Path) -> None:
    for path in ("/gzip2", "/deflate", "/raw-deflate", "/identity"):
        result = fetch(web.url + path, tmp_path)
        assert result == f"URL: {web.url}{path}\n\n{TEXT.decode()}", (path, result[:200])
    # The cap applies to the decoded body.
    capped = fetch(web.url + "/gzip2", tmp_path, max_bytes=1024)
    assert capped.endswith("\n\n" + TEXT[:1024].decode()), capped[-100:]
    # And the worker asks for only what it can decode.
    assert web.requests[-1]["headers"]["Accept-Encoding"] == "gzip, deflate"


def test_encodings_that_cannot_be_bounded_are_refused(web: WebServer, tmp_path: Path) -> None:
    outcomes = {path: fetch(web.url + path, tmp_path) for path in ("/br", "/gzip3", "/corrupt")}
    assert "content encoding 'br'; only gzip and deflate" in outcomes["/br"], outcomes
    assert "stacked 3 content encodings" in outcomes["/gzip3"], outcomes
    assert "not valid gzip data" in outcomes["/corrupt"], outcomes
    not_refused = [p for p, r in outcomes.items()
                   if not r.startswith(f"Error: fetching {web.url}{p} failed: ")]  # fmt: skip
    record("web_fetch: compression bombs", tried=len(outcomes),
           rejected=len(outcomes) - len(not_refused), escapes=len(not_refused))  # fmt: skip
    assert not not_refused, outcomes


class _BombNode(BaseHTTPRequestHandler):
    """A compromised node: every answer is the bomb."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip, gzip")
        self.send_header("Content-Length", str(len(bomb())))
        self.end_headers()
        self.wfile.write(bomb())


NODE_CHILD = """
import json, resource, sys
from claw_worker.config.schema import Config
from claw_worker.nodes.dispatch import p2p
from claw_worker.nodes.registry import NodeInfo
node = NodeInfo(id="cam", name="cam", url=sys.argv[1], capabilities=("run",), token="t",
                ttl_sec=60, registered_at=0.0, seen_ago=0.0, status="", relay=False)
body = {"action": "invoke", "command": "x", "params": {}}
config = Config()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
answer, _ = p2p(config, node, body, 30)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "answer": answer}))
"""


def test_a_node_answering_a_compression_bomb_is_read_within_its_cap() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BombNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        child = subprocess.run([sys.executable, "-c", NODE_CHILD, url], capture_output=True,
                               text=True, timeout=120, check=True, cwd=ROOT)  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    outcome = json.loads(child.stdout)
    assert outcome["answer"]["code"] == "bad_response", outcome["answer"]
    assert "larger than" in outcome["answer"]["error"]
    growth_mib = outcome["growth_kib"] / 1024  # the cap is nodes.max_response_bytes, 8 MiB
    escaped = growth_mib > 48
    record("nodes: compression bomb in an answer", tried=1, rejected=int(not escaped),
           escapes=int(escaped))  # fmt: skip
    assert not escaped, f"the dispatch grew the process by {growth_mib:.0f} MiB"
