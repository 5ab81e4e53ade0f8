"""A MaixCam board as the gateway sees it: a TCP client that sends PicoClaw's MaixCam events
(one JSON object a line: ``{"type", "timestamp", "tips", "data"}``) and reads the gateway's
lines (``{"type": "command", "message", "chat_id", "timestamp"}``, or ``{"type": "error"}``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any


class MaixCamDevice:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, host: str = "127.0.0.1", *, source: str | None = None
    ) -> MaixCamDevice:
        """``source``: the address to connect from (any of 127.0.0.0/8 on loopback)."""
        reader, writer = await asyncio.open_connection(
            host, port, limit=1 << 20, local_addr=(source, 0) if source else None
        )
        return cls(reader, writer)

    async def event(
        self,
        kind: str,
        data: dict[str, Any] | None = None,
        *,
        device_id: str | None = None,
        tips: str = "",
    ) -> None:
        event: dict[str, Any] = {"type": kind, "timestamp": time.time(), "tips": tips,
                                 "data": data or {}}  # fmt: skip
        if device_id is not None:
            event["device_id"] = device_id
        await self.raw(json.dumps(event).encode() + b"\n")

    async def raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, timeout: float = 30.0) -> dict[str, Any]:
        """The gateway's next line, parsed."""
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise ConnectionError("the gateway closed the connection")
        return json.loads(line)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
