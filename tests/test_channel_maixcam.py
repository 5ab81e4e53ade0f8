"""The MaixCam channel end to end: the real ingress (its TCP server), real Celery workers, a
real redis-server and the scripted LLM, with devices played by asyncio TCP clients speaking
PicoClaw's MaixCam lines (tests/platforms/maixcam_device.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from claw_ingress.channels.maixcam import MAX_DEVICES
from tests.fixtures.fleet import Fleet
from tests.fixtures.procs import free_port, wait_for
from tests.platforms.maixcam_device import MaixCamDevice

DETECTION = {"class_name": "person", "class_id": 0, "score": 0.87, "x": 10, "y": 20, "w": 30,
             "h": 40}  # fmt: skip


def start_fleet(fleet_factory: Any, **overrides: Any) -> int:
    return start_fleet_and_port(fleet_factory, **overrides)[1]


def start_fleet_and_port(fleet_factory: Any, **overrides: Any) -> tuple[Fleet, int]:
    port = free_port()
    fleet = fleet_factory(**{
        "channels__maixcam__enabled": True,
        "channels__maixcam__port": port,
        "channels__maixcam__allow_from": ["cam-1", "cam-2"],
        "channels__maixcam__rate_per_sec": 20.0,
        **overrides,
    })  # fmt: skip
    fleet.start_worker()
    fleet.start_ingress()
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
             timeout=30, what="the maixcam server listening")  # fmt: skip
    return fleet, port


async def command(device: MaixCamDevice) -> dict[str, Any]:
    line = await device.read()
    assert line["type"] == "command", line
    return line


async def assert_echoed(device: MaixCamDevice, text: str) -> None:
    """Send ``text`` as a message event; the agent's echo of it is the next command."""
    await device.event("message", {"text": text})
    assert (await command(device))["message"] == f"echo: {text}"


def test_detection_is_answered_on_the_device_connection(fleet_factory) -> None:
    port = start_fleet(fleet_factory)

    async def scenario() -> None:
        cam = await MaixCamDevice.connect(port)
        await cam.event("person_detected", DETECTION, device_id="cam-1", tips="front door")
        reply = await command(cam)
        assert reply["chat_id"] == "cam-1"
        assert reply["message"] == (
            "echo: MaixCam cam-1: person detected (confidence 87%) at (10, 20), size 30x40\n"
            "front door"
        )
        # Status and heartbeat are noted, not sent to the agent: the next line answers the
        # message after them.
        await cam.event("status", {"fps": 30})
        await cam.event("heartbeat")
        await assert_echoed(cam, "what do you see")
        await cam.close()

    asyncio.run(scenario())


def test_bad_lines_get_errors_and_the_connection_stays(fleet_factory) -> None:
    port = start_fleet(fleet_factory)

    async def scenario() -> None:
        cam = await MaixCamDevice.connect(port)
        await cam.raw(b"{not json\n")
        assert "JSON" in (await cam.read())["error"]
        await cam.raw(b"[1, 2]\n")
        assert (await cam.read())["type"] == "error"
        await cam.event("fly_away", device_id="cam-1")
        assert "unknown event type" in (await cam.read())["error"]
        await cam.event("message", {})
        assert "data.text" in (await cam.read())["error"]
        await cam.raw(b'{"type": "message", "data": {"text": "' + b"x" * 70_000 + b'"}}\n')
        assert "longer than" in (await cam.read())["error"]
        await cam.event("message", {"text": "still here"})
        reply = await command(cam)
        assert reply == {**reply, "message": "echo: still here", "chat_id": "cam-1"}
        await cam.close()

    asyncio.run(scenario())


def test_each_device_gets_its_own_replies_and_strangers_a_pairing_code(fleet_factory) -> None:
    port = start_fleet(fleet_factory)

    async def scenario() -> None:
        one, two = await MaixCamDevice.connect(port), await MaixCamDevice.connect(port)
        await one.event("message", {"text": "hello from one", "device_id": "cam-1"})
        await two.event("message", {"text": "hello from two"}, device_id="cam-2")
        for _ in range(2):
            await one.event("message", {"text": "more from one"})
            await two.event("message", {"text": "more from two"})
        got_one = [(await command(one))["message"] for _ in range(3)]
        got_two = [(await command(two))["message"] for _ in range(3)]
        assert got_one == ["echo: hello from one", *["echo: more from one"] * 2]
        assert got_two == ["echo: hello from two", *["echo: more from two"] * 2]
        # A device not in allow_from (dm_policy pairing) is sent a code, never the agent.
        stranger = await MaixCamDevice.connect(port)
        await stranger.event("person_detected", DETECTION, device_id="cam-9")
        line = await command(stranger)
        assert "pairing code" in line["message"] and line["chat_id"] == "cam-9"
        for device in (one, two, stranger):
            await device.close()

    asyncio.run(scenario())


def test_silent_connections_are_closed_and_free_their_slots(fleet_factory) -> None:
    """Every device slot taken by connections that never say anything (boards that lost
    power, or a peer that opens sockets and waits): closed after idle_timeout_sec, so a real
    device gets in; before, it was refused for good ("too many devices connected")."""
    port = start_fleet(fleet_factory, channels__maixcam__idle_timeout_sec=2,
                       channels__maixcam__max_connections_per_address=MAX_DEVICES)  # fmt: skip

    async def scenario() -> None:
        silent = [await MaixCamDevice.connect(port) for _ in range(MAX_DEVICES)]
        try:
            # Each silent one is told why, then closed.
            for device in silent:
                line = await device.read(timeout=30)
                assert "idle_timeout_sec" in line["error"], line

            async def served() -> bool:
                cam = await MaixCamDevice.connect(port)
                try:
                    await cam.event("message", {"text": "let me in"}, device_id="cam-1")
                    line = await cam.read()
                    return line.get("message") == "echo: let me in"
                finally:
                    await cam.close()

            assert await served()
        finally:
            for device in silent:
                await device.close()

    asyncio.run(scenario())


def test_one_address_cannot_take_every_slot_with_live_connections(fleet_factory) -> None:
    """Connections that keep sending heartbeats are not idle, so before, one host opening 64
    of them held every slot for as long as it liked: no camera got in. Now one address has
    at most ``max_connections_per_address``; a device from another address is served."""
    port = start_fleet(fleet_factory, channels__maixcam__max_connections_per_address=3)

    async def first_line(source: str, text: str) -> dict[str, Any]:
        cam = await MaixCamDevice.connect(port, source=source)
        try:
            with contextlib.suppress(OSError):  # a refused one may be closed already
                await cam.event("message", {"text": text}, device_id="cam-1")
            return await cam.read()
        finally:
            await cam.close()

    async def scenario() -> None:
        hogs = [await MaixCamDevice.connect(port, source="127.0.0.2") for _ in range(3)]
        try:
            for hog in hogs:
                await hog.event("heartbeat")
            refused = await first_line("127.0.0.2", "me too")
            assert refused == {"type": "error", "error": "too many connections from 127.0.0.2 "
                               "(3, channels.maixcam.max_connections_per_address)"}, refused  # fmt: skip
            assert (await first_line("127.0.0.3", "hi"))["message"] == "echo: hi"
            await hogs.pop().close()  # a slot of that address freed: it can be taken again
            deadline = time.monotonic() + 30
            while (await first_line("127.0.0.2", "now?")).get("message") != "echo: now?":
                assert time.monotonic() < deadline, "the freed slot was never given again"
        finally:
            for hog in hogs:
                await hog.close()

    asyncio.run(scenario())


def test_a_device_sending_now_and_then_is_not_idle(fleet_factory) -> None:
    port = start_fleet(fleet_factory, channels__maixcam__idle_timeout_sec=2)

    async def scenario() -> None:
        cam = await MaixCamDevice.connect(port)
        loop = asyncio.get_running_loop()
        until = loop.time() + 5
        while loop.time() < until:  # heartbeats every second, for longer than the timeout
            await cam.event("heartbeat", device_id="cam-1")
            with contextlib.suppress(TimeoutError):
                line = await cam.read(timeout=1)
                raise AssertionError(f"unexpected line {line}")
        await assert_echoed(cam, "still on")
        await cam.close()

    asyncio.run(scenario())


def test_half_a_surrogate_pair_is_replaced_not_a_dropped_connection(fleet_factory) -> None:
    port = start_fleet(fleet_factory)

    async def scenario() -> None:
        cam = await MaixCamDevice.connect(port)
        await cam.raw(b'{"type": "message", "device_id": "cam-1", '
                      b'"data": {"text": "cut \\ud83e emoji"}}\n')  # fmt: skip
        assert (await command(cam))["message"] == "echo: cut \ufffd emoji"
        await assert_echoed(cam, "and on")
        await cam.close()

    asyncio.run(scenario())


def test_a_flood_of_status_lines_is_not_a_flood_of_log_lines(fleet_factory) -> None:
    """Status events are only noted, so no rate limit reaches them: each was an INFO line,
    and a device sending them at full speed rotated the ingress's logs away (every other
    process's trail with them). A status is logged when it changes, at most once a minute."""
    fleet, port = start_fleet_and_port(fleet_factory)

    async def scenario() -> None:
        cam = await MaixCamDevice.connect(port)
        lines = b"".join(
            b'{"type": "status", "device_id": "cam-1", "data": {"fps": %d}}\n' % (n % 7)
            for n in range(3000)
        )
        await cam.raw(lines)
        await assert_echoed(cam, "done")
        await cam.close()

    asyncio.run(scenario())
    noted = fleet.output("ingress").count("maixcam status")
    assert 1 <= noted <= 2, noted
