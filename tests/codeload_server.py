"""A loopback server speaking GitHub codeload's archive URLs, and archives built to order.

``GET /<owner>/<repo>/tar.gz/<ref>`` answers the archive stored for that triple
(``application/x-gzip``, as codeload does; with ``chunked`` without a length), a redirect
stored for the path, or 404.
:func:`archive` builds a tar.gz the way GitHub does (one top directory ``<repo>-<ref>/``, a
pax global header whose comment is the commit), from entries that may be anything a hostile
archive could hold.
"""

from __future__ import annotations

import io
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.platforms.base import Handler, LoopbackHTTP

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def archive(top: str, entries: list[tuple[Any, ...]], *, commit: str = COMMIT) -> bytes:
    """A tar.gz of ``entries`` under ``top/``; each entry is
    ``("file", name, data[, mode])``, ``("dir", name)``, ``("symlink", name, target)``,
    ``("hardlink", name, target)``, ``("chr", name)``, ``("fifo", name)``; a name starting
    with "/" or "!" is used as it is (no ``top/``; "!" dropped)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": commit}) as tar:  # fmt: skip
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(_full(top, name))
            info.mtime = 1_700_000_000
            data = None
            if kind == "file":
                data = rest[0] if isinstance(rest[0], bytes) else rest[0].encode()
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, _full(top, rest[0])
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _full(top: str, name: str) -> str:
    if name.startswith("/"):
        return name
    if name.startswith("!"):
        return name[1:]
    return f"{top}/{name}" if name else top


class _Handler(Handler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server: CodeloadServer = self.fake
        with server.lock:
            server.requests.append(self.path)
        if self.path in server.redirects:
            self.send_body(302, None, b"", {"Location": server.redirects[self.path]})
            return
        parts = self.path.strip("/").split("/", 3)
        if len(parts) == 4 and parts[2] == "tar.gz":
            owner, repo, _, ref = parts
            data = server.archives.get((owner, repo, ref))
            if data is not None:
                self._archive(data, f"{repo}-{ref}.tar.gz")
                return
        self.send_body(404, "text/plain", b"404: Not Found")

    def _archive(self, data: bytes, filename: str) -> None:
        if not self.fake.chunked:
            headers = {"Content-Disposition": f"attachment; filename={filename}"}
            self.send_body(200, "application/x-gzip", data, headers)
            return
        # Streamed with no length announced, as codeload does for large repositories.
        self.send_response(200)
        self.send_header("Content-Type", "application/x-gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(data), 4096):
            chunk = data[start : start + 4096]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")


@dataclass
class CodeloadServer(LoopbackHTTP):
    handler = _Handler
    archives: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    chunked: bool = False  # answer archives without Content-Length
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, owner: str, repo: str, ref: str, entries: list[tuple[Any, ...]]) -> None:
        """Serve an archive of ``entries`` for owner/repo at ref (top dir ``<repo>-<ref>``)."""
        self.archives[(owner, repo, ref)] = archive(f"{repo}-{ref}", entries)
