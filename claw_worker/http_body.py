"""Reading an HTTP answer's body with memory bounded by a limit, whatever the server sends.

httpx decodes ``Content-Encoding`` before its ``iter_bytes`` yields, one network chunk at a
time and with no bound on what a chunk inflates to: ``Content-Encoding: gzip, gzip`` lets
1.8 KB on the wire become a gigabyte in one chunk (a compression bomb), before any cap can
look at it. Here the raw bytes (``iter_raw``) go through one zlib decoder per encoding, each
asked for at most ``_STEP`` bytes at a time, and reading stops at the limit: the memory
used is the limit plus a few windows, however deep or dense the encoding.

Only ``gzip`` (``x-gzip``) and ``deflate`` are decoded, at most ``MAX_LAYERS`` of them;
any other encoding (``br``, ``zstd``, ...) is refused with ``BodyError`` rather than handed
to a decoder that cannot be bounded. ``ACCEPT_ENCODING`` asks servers for only these.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import httpx

ACCEPT_ENCODING = "gzip, deflate"
MAX_LAYERS = 2  # "gzip, gzip" is legal; deeper stacks only serve to bomb
_STEP = 64 * 1024  # the most one decoder hands on at a time
_GZIP = 16 + zlib.MAX_WBITS
_WBITS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": zlib.MAX_WBITS}


class BodyError(Exception):
    """The body cannot be read safely: an encoding not decoded here, or corrupt data."""


def read_limited(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of ``response``'s decoded body (a streamed response)."""
    encodings = [
        e.strip().lower()
        for e in response.headers.get_list("content-encoding", split_commas=True)
        if e.strip().lower() not in ("", "identity")
    ]
    unknown = [e for e in encodings if e not in _WBITS]
    if unknown:
        raise BodyError(f"the server used content encoding {unknown[0]!r}; only gzip and "
                        "deflate are decoded")  # fmt: skip
    if len(encodings) > MAX_LAYERS:
        raise BodyError(f"the server stacked {len(encodings)} content encodings "
                        f"({', '.join(encodings)}); at most {MAX_LAYERS} are decoded")  # fmt: skip
    raw = _nonempty(response.iter_raw())
    read: Callable[[], bytes] = lambda: next(raw, b"")  # noqa: E731
    for encoding in reversed(encodings):  # the last one listed was applied last
        read = _Inflater(read, _WBITS[encoding]).read
    data = bytearray()
    while len(data) < limit:
        chunk = read()
        if not chunk:
            break
        data += chunk[: limit - len(data)]
    return bytes(data)


def _nonempty(chunks: Iterator[bytes]) -> Iterator[bytes]:
    return (chunk for chunk in chunks if chunk)  # b"" means the end to the readers


class _Inflater:
    """One encoding layer: ``read()`` gives at most ``_STEP`` decoded bytes, b"" at the end."""

    def __init__(self, source: Callable[[], bytes], wbits: int) -> None:
        self.source = source
        self.wbits = wbits
        self.zlib = zlib.decompressobj(wbits)
        self.started = False
        self.ended = False  # the source has nothing more
        self.done = False

    def read(self) -> bytes:
        while not self.done:
            data = self.zlib.unconsumed_tail or (b"" if self.ended else self.source())
            self.ended = self.ended or not data
            out = self._decode(data)  # with b"": what zlib still holds, bounded too
            # Bytes after the end of the stream are ignored, as httpx does.
            self.done = self.zlib.eof or (self.ended and not out)
            if out:
                return out
        return b""

    def _decode(self, data: bytes) -> bytes:
        try:
            out = self.zlib.decompress(data, _STEP)
        except zlib.error as exc:
            if self.started or self.wbits != zlib.MAX_WBITS:
                raise BodyError(f"the body is not valid {self._name()} data: {exc}") from None
            # "deflate" is often sent raw, without the zlib wrapper: retry as that.
            self.wbits = -zlib.MAX_WBITS
            self.zlib = zlib.decompressobj(self.wbits)
            return self._decode(data)
        self.started = True
        return out

    def _name(self) -> str:
        return "gzip" if self.wbits == _GZIP else "deflate"
