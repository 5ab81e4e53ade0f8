"""MaixCam: Sipeed's AI camera boards connect to a TCP server of the ingress.

The wire format follows PicoClaw's MaixCam channel: one JSON object a line each way. The
device sends events ``{"type": "person_detected" | "message" | "status" | "heartbeat",
"timestamp": <epoch s>, "tips": "...", "data": {...}}`` (a detection's ``data`` holds
``class_name``, ``class_id``, ``score`` and the box ``x``, ``y``, ``w``, ``h``; a message's,
``text``); the gateway sends ``{"type": "command", "timestamp", "message": <text>,
"chat_id": <device>}``, and ``{"type": "error", "error"}`` for a line it cannot take (the
connection stays open unless a device keeps sending them). A connection that sends no event
(a heartbeat will do) for ``idle_timeout_sec`` is told so and closed, and TCP keepalive closes
one whose board lost power, so that neither holds one of the ``MAX_DEVICES`` slots for good.

A detection or a message becomes one message for the agent; a status update and a heartbeat
are only noted (``clawctl status`` shows the last status of each device). A device names
itself with ``device_id`` (in the event or its ``data``) on its first event; until then, and
for devices that never do, it is its peer address. That id is the chat and the sender: the
channel's ``allow_from`` and ``dm_policy`` apply to it (an unknown device gets a pairing
code as a command line). Replies go to the connection of their device, on whichever ingress
replica holds it.

PicoClaw's protocol has no authentication: whoever reaches the port can claim any device
id, so ``allow_from`` only sorts honest devices. The server therefore listens on 127.0.0.1
unless ``channels.maixcam.host`` says otherwise; open it only to a network you trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from typing import Any

import structlog
from redis.exceptions import RedisError

from claw_ingress.bodies import BodyError, loads_bounded
from claw_ingress.channels.base import (
    Channel,
    ChannelContext,
    ChannelError,
    SendError,
)
from claw_worker.contract import InboundMessage

log = structlog.get_logger(__name__)

MAX_LINE = 64 * 1024  # bytes in one event line
MAX_DEVICES = 64  # connections at once
MAX_BAD_LINES = 20  # in a row: then the device is disconnected
WRITE_TIMEOUT_SEC = 10.0
DEVICE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
NOTED = frozenset({"status", "heartbeat"})
STATUS_LOG_EVERY_SEC = 60.0
# Probes after 60 s of silence, every 15 s, 4 unanswered: a dead peer is closed in 2 min.
KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 15, "TCP_KEEPCNT": 4}


class _Device:
    def __init__(self, writer: asyncio.StreamWriter, peer: str, address: str) -> None:
        self.writer = writer
        self.address = address  # the peer's IP address (max_connections_per_address)
        self.chat_id = peer  # the peer address until the device names itself
        self.named = False
        self.status: Any = None
        self.status_logged = -STATUS_LOG_EVERY_SEC  # time.monotonic() of the last logged
        self.lock = asyncio.Lock()

    async def write(self, frame: dict[str, Any]) -> None:
        line = json.dumps(frame, ensure_ascii=False).encode() + b"\n"
        async with self.lock:
            self.writer.write(line)
            await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_SEC)


def event_text(kind: str, event: dict[str, Any], device: str) -> str | None:
    """What the agent is told of an event (None: nothing to tell)."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    tips = event.get("tips") if isinstance(event.get("tips"), str) else ""
    if kind == "message":
        text = data.get("text", event.get("text", event.get("message")))
        return text if isinstance(text, str) and text.strip() else None
    if kind != "person_detected":
        return None

    def number(name: str) -> float:
        value = data.get(name)
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
        )

    label = data.get("class_name") if isinstance(data.get("class_name"), str) else "person"
    text = (
        f"MaixCam {device}: {label[:64]} detected (confidence {number('score') * 100:.0f}%) "
        f"at ({number('x'):.0f}, {number('y'):.0f}), size {number('w'):.0f}x{number('h'):.0f}"
    )
    return f"{text}\n{tips[:500]}" if tips.strip() else text


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive on a device's socket: a board that lost power or its network leaves a
    connection no read ever ends; the probes close it (after about two minutes)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE.items():
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class MaixCamChannel(Channel):
    name = "maixcam"
    connection_bound = True

    def __init__(self, ctx: ChannelContext) -> None:
        super().__init__(ctx)
        self._server: asyncio.Server | None = None
        self._devices: dict[str, _Device] = {}  # chat_id -> its connection here (the newest)
        self._open: set[_Device] = set()
        self._renew: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        try:
            self._server = await asyncio.start_server(self._serve, cfg.host, cfg.port)
        except OSError as exc:
            raise ChannelError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from None
        self._renew = self.background(self.keep_holding(lambda: self._devices), "hold")
        log.info("maixcam listening", channel=self.name, host=cfg.host, port=cfg.port)

    async def stop(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
        if self._server is not None:
            self._server.close()
        for device in list(self._open):
            device.writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def describe(self) -> dict[str, Any]:
        status = {d.chat_id: json.dumps(d.status)[:200] for d in self._open}
        return {"devices": len(self._open), "status": status}

    def holds(self, chat_id: str) -> bool:
        return chat_id in self._devices

    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        device = self._devices.get(chat_id)
        if device is None:
            raise SendError(f"device {chat_id} is not connected", permanent=True)
        frame = {"type": "command", "timestamp": time.time(), "message": text, "chat_id": chat_id}
        try:
            await device.write(frame)
        except (OSError, TimeoutError) as exc:
            device.writer.close()
            raise SendError(f"device {chat_id}: {exc!r}", permanent=True) from None

    # -- one device ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        tcp = isinstance(peer, tuple)
        device = _Device(writer, f"{peer[0]}:{peer[1]}" if tcp else "unix",
                         peer[0] if tcp else "unix")  # fmt: skip
        refusal = self._refusal(device.address)
        if refusal:
            log.warning("maixcam device refused", channel=self.name, chat_id=device.chat_id,
                        error=refusal)  # fmt: skip
            with contextlib.suppress(Exception):
                await device.write({"type": "error", "error": refusal})
            writer.close()
            return
        self._open.add(device)
        _keepalive(writer)
        log.info("maixcam device connected", channel=self.name, chat_id=device.chat_id)
        try:
            await self._hold(device)
            await self._read(reader, device)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the device went away
        except RedisError as exc:
            log.warning("redis unavailable", channel=self.name, error=str(exc))
        finally:
            await self._forget(device)
            writer.close()
            log.info("maixcam device disconnected", channel=self.name, chat_id=device.chat_id)

    def _refusal(self, address: str) -> str:
        """Why a new connection from ``address`` is not taken ("" it is)."""
        if len(self._open) >= MAX_DEVICES:
            return "too many devices connected"
        most = self.config.max_connections_per_address
        if sum(device.address == address for device in self._open) >= most:
            return (f"too many connections from {address} ({most}, "
                    "channels.maixcam.max_connections_per_address)")  # fmt: skip
        return ""

    async def _read(self, reader: asyncio.StreamReader, device: _Device) -> None:
        buffer, skipping, bad = bytearray(), False, 0
        idle = self.config.idle_timeout_sec
        loop = asyncio.get_running_loop()
        due = loop.time() + idle  # a whole line (an event) must arrive by then
        while True:
            try:
                async with asyncio.timeout_at(due if idle else None):
                    chunk = await reader.read(MAX_LINE)
            except TimeoutError:
                log.info("maixcam device silent: disconnected", channel=self.name,
                         chat_id=device.chat_id, idle_timeout_sec=idle)  # fmt: skip
                with contextlib.suppress(OSError, TimeoutError):
                    await device.write({"type": "error", "error": f"no event for {idle} s "
                                        "(channels.maixcam.idle_timeout_sec): closed"})  # fmt: skip
                return
            if not chunk:
                return
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                due = loop.time() + idle
                if skipping:  # the end of a line that was too long
                    skipping = False
                    continue
                error = await self._line(device, line) if line.strip() else None
                bad = 0 if error is None else bad + 1
                if error is not None:
                    await device.write({"type": "error", "error": error})
                if bad >= MAX_BAD_LINES:
                    log.warning("maixcam device sends only bad lines: disconnected",
                                channel=self.name, chat_id=device.chat_id)  # fmt: skip
                    return
            if len(buffer) > MAX_LINE:
                buffer.clear()
                if not skipping:
                    skipping = True
                    await device.write({"type": "error",
                                        "error": f"line longer than {MAX_LINE} bytes"})  # fmt: skip

    async def _line(self, device: _Device, line: bytes) -> str | None:
        """Act on one event line; the error to send back, or None."""
        if len(line) > MAX_LINE:
            return f"line longer than {MAX_LINE} bytes"
        try:
            event = loads_bounded(line)
        except BodyError as exc:
            return str(exc.payload["error"]).replace("body", "line")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return "an event is a JSON object with a type"
        kind = event["type"]
        await self._name(device, event)
        if kind in NOTED:
            if kind == "status":
                self._note_status(device, event.get("data"))
            return None
        if kind not in ("person_detected", "message"):
            return f"unknown event type {kind[:40]!r} (person_detected, message, status, heartbeat)"
        text = event_text(kind, event, device.chat_id)
        if text is None:
            return "a message event needs data.text"
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        message = InboundMessage(
            channel=self.name, chat_id=device.chat_id, sender_id=device.chat_id, text=text,
            metadata={"event": kind, "timestamp": event.get("timestamp"), "data": data,
                      "sender_name": device.chat_id},
        )  # fmt: skip
        try:
            await self.receive(message)
        except RedisError as exc:
            log.warning("redis unavailable", channel=self.name, error=str(exc))
            return "message store unavailable, retry later"
        return None

    def _note_status(self, device: _Device, status: Any) -> None:
        """Keep the device's last status; log it when it changed, at most once every
        ``STATUS_LOG_EVERY_SEC`` (status lines reach no rate limit: logged each, a device
        sending them at full speed rotated the ingress's logs away)."""
        changed, device.status = status != device.status, status
        now = time.monotonic()
        if changed and now - device.status_logged >= STATUS_LOG_EVERY_SEC:
            device.status_logged = now
            log.info("maixcam status", channel=self.name, chat_id=device.chat_id,
                     preview=json.dumps(status)[:80])  # fmt: skip

    async def _name(self, device: _Device, event: dict[str, Any]) -> None:
        """Adopt the device's own id (once) in place of its peer address."""
        if device.named:
            return
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        given = event.get("device_id", data.get("device_id"))
        if not isinstance(given, str) or not DEVICE_ID.fullmatch(given):
            return
        await self._forget(device, keep_open=True)
        device.chat_id, device.named = given, True
        await self._hold(device)

    async def _hold(self, device: _Device) -> None:
        self._devices[device.chat_id] = device
        await self.ctx.hold_connection(self.name, device.chat_id)

    async def _forget(self, device: _Device, *, keep_open: bool = False) -> None:
        if not keep_open:
            self._open.discard(device)
        if self._devices.get(device.chat_id) is device:
            del self._devices[device.chat_id]
            chat_id = device.chat_id
            await self.release_connection(chat_id, lambda: chat_id in self._devices)
