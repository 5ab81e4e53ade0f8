"""Starting, restarting and stopping the enabled channels of one ingress.

Each enabled channel runs in a task of its own: its config is checked, then it starts; a
channel that fails (bad token, platform down, a bug) is logged with the reason, once per
distinct reason, and tried again with backoff (1 s doubling to ``MAX_BACKOFF_SEC``), and
never stops another. Once started, the task watches the channel's long-running loops
(``Channel.background``): if one ends (a bug, a cancel a library let out), the channel is
stopped and started again the same way, so a poller that died does not leave the chat deaf
until the ingress restarts (the backoff starts over after ``STEADY_SEC`` of running).
:meth:`ChannelManager.sync` follows a config reload: channels newly enabled start, disabled
ones stop, and one whose section changed restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from claw_ingress.cancel import stop_if_cancelled
from claw_ingress.channels import builtin_channels, channel_class, config_channels
from claw_ingress.channels.base import Channel, ChannelContext, ChannelError

log = structlog.get_logger(__name__)

MAX_BACKOFF_SEC = 300.0
STEADY_SEC = 300.0  # a channel that ran this long before its loop ended: backoff from 1 s


class _Running:
    def __init__(self, channel: Channel, section: Any) -> None:
        self.channel = channel
        self.section = section  # the config section it started with
        self.started = False
        self.error = ""
        self.restarts = 0  # times a loop of the started channel ended and it was restarted
        self.task: asyncio.Task[None] | None = None


class ChannelManager:
    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self._running: dict[str, _Running] = {}

    def enabled(self) -> list[str]:
        channels = self.ctx.live.config.channels
        configured = [name for name in config_channels() if getattr(channels, name).enabled]
        return [*builtin_channels(), *configured]

    def get(self, name: str) -> Channel | None:
        """The adapter of ``name`` if it has started here, else None."""
        running = self._running.get(name)
        return running.channel if running is not None and running.started else None

    def wanted(self, name: str) -> bool:
        return name in self._running

    async def sync(self) -> None:
        """Start what is enabled and not running; stop what is no longer enabled; restart
        a channel whose config section changed."""
        wanted = self.enabled()
        for name in list(self._running):
            section = _section(self.ctx, name)
            if name not in wanted or section != self._running[name].section:
                await self._stop(name)
        for name in wanted:
            if name not in self._running:
                self._launch(name)

    async def stop(self) -> None:
        for name in list(self._running):
            await self._stop(name)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: _facts(r) for name, r in self._running.items()}

    def _launch(self, name: str) -> None:
        try:
            channel = channel_class(name)(self.ctx)
        except Exception as exc:  # an adapter that cannot even load: said, never fatal
            log.error("channel cannot load", channel=name, error=repr(exc))
            return
        self.run(name, channel)

    def run(self, name: str, channel: Channel) -> None:
        """Start ``channel`` as ``name`` and keep it running until it is stopped."""
        running = self._running[name] = _Running(channel, _section(self.ctx, name))
        running.task = asyncio.create_task(self._run(running), name=f"channel-{name}")

    async def _run(self, running: _Running) -> None:
        channel, delay = running.channel, 1.0
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            try:
                channel.check_config()
                await channel.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ChannelError) else repr(exc)
                if reason != running.error:
                    log.error("channel failed to start; retrying", channel=channel.name,
                              error=reason, retry_in=delay)  # fmt: skip
                running.error = reason
                await _halt(channel)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SEC)
                continue
            running.started, running.error = True, ""
            log.info("channel started", channel=channel.name)
            began = time.monotonic()
            reason = await channel.loop_ended()
            running.started, running.error = False, reason
            running.restarts += 1
            if time.monotonic() - began >= STEADY_SEC:
                delay = 1.0
            log.error("channel loop ended; restarting the channel", channel=channel.name,
                      error=reason, retry_in=delay)  # fmt: skip
            await _halt(channel)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SEC)

    async def _stop(self, name: str) -> None:
        running = self._running.pop(name)
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task
        await _halt(running.channel)
        log.info("channel stopped", channel=name)


async def _halt(channel: Channel) -> None:
    """Stop ``channel`` and end whatever loops of it still run."""
    try:
        await channel.stop()
    except Exception as exc:
        log.warning("channel did not stop cleanly", channel=channel.name, error=repr(exc))
    await channel.end_loops()


def _facts(running: _Running) -> dict[str, Any]:
    return {"started": running.started, "error": running.error or None,
            "restarts": running.restarts, **running.channel.describe()}  # fmt: skip


def _section(ctx: ChannelContext, name: str) -> Any:
    return getattr(ctx.live.config.channels, name, None)
