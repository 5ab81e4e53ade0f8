"""What every chat channel adapter is: a small subclass of :class:`Channel`.

An adapter speaks one platform: it turns the platform's events into ``InboundMessage`` and
hands them to :meth:`Channel.receive` (which answers slash commands, applies the channel's
access policy and stores the rest in the session's mailbox), and it sends text back with
:meth:`Channel.send`. Everything shared lives elsewhere: splitting long text, the token
bucket, retries on 429 and never sending a message twice (``claw_ingress/delivery.py``),
the access policy and pairing (``claw_ingress/access.py``), starting, restarting and
stopping (``claw_ingress/channels/manager.py``).

An adapter sets ``metadata["group"] = True`` on a message from a chat with more people than
the sender and the bot: the access policy gives pairing codes in private chats only.

An adapter that pushes (webhooks) returns its routes from :meth:`Channel.routes`; they are
mounted under ``/webhooks/<name>``, and one whose platform wants a push answered within
seconds hands messages over with :meth:`Channel.receive_in_time`. One that holds
connections (a WebSocket, a device over TCP) sets ``connection_bound``: its replies are sent
by the ingress replica that holds the chat's connection
(:meth:`ChannelContext.hold_connection`, renewed by :meth:`Channel.keep_holding`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from starlette.routing import BaseRoute

from claw_ingress.cancel import stop_if_cancelled
from claw_worker import constants as k
from claw_worker.config.channels import ChannelConfig
from claw_worker.config.reload import LiveConfig
from claw_worker.contract import InboundMessage

CONNECTION_TTL_SEC = 60  # a held connection's mark; renewed every third of this


def is_ascii_number(text: str) -> bool:
    """Whether ``text`` is a whole number in ASCII digits: ``str.isdigit`` also takes '²',
    '¹' (Latin-1, so in any header) and other scripts' digits, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def within_clock_skew(epoch: float | str, window_sec: float, *, per_sec: int = 1) -> bool:
    """Whether a platform's timestamp is within ``window_sec`` of now; one further off, or
    text that is not a whole number, is refused as a replay (or a clock far wrong). Text
    counts ``per_sec`` units a second (DingTalk's milliseconds: 1000). Each channel's window
    is its ``max_clock_skew_sec``."""
    if isinstance(epoch, str):
        if not is_ascii_number(epoch):
            return False
        epoch = int(epoch) / per_sec
    return abs(time.time() - epoch) <= window_sec


class ChannelError(Exception):
    """The channel cannot run as configured (bad token, platform unreachable): said once,
    with the reason, and retried with backoff by the manager."""


class SendError(Exception):
    """A send the platform refused. ``retry_after``: it asked to wait (429) and the same
    send may then succeed; ``permanent``: it never will (the chat is gone, the bot was
    removed, the text is refused), so delivery gives up on this message."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


@dataclass(frozen=True)
class Accepted:
    """What became of an inbound message (adapters rarely need more than ``reply``)."""

    status: str  # command | queued | duplicate | refused | pairing | limited | too_large
    message_id: str = ""
    run_id: str = ""
    reply: str = ""  # the text sent back at once (a command's answer, a pairing code)
    retry_after_sec: int = 0  # limited: the sender may send again after this long


@dataclass
class ChannelContext:
    """What the ingress gives every channel."""

    live: LiveConfig
    redis: aioredis.Redis
    http: httpx.AsyncClient
    replica: str  # this ingress replica's key in the process registry
    accept: Callable[[InboundMessage], Awaitable[Accepted]]
    held: dict[tuple[str, str], float] = field(default_factory=dict)

    async def hold_connection(self, channel: str, chat_id: str) -> None:
        """Say this replica holds ``chat_id``'s connection (call again every
        ``CONNECTION_TTL_SEC / 3`` while it is open)."""
        await self.redis.set(k.connection_key(channel, chat_id), self.replica,
                             ex=CONNECTION_TTL_SEC)  # fmt: skip

    async def drop_connection(self, channel: str, chat_id: str) -> None:
        """The connection closed: forget it if this replica still holds it."""
        key = k.connection_key(channel, chat_id)
        if await self.redis.get(key) == self.replica:
            await self.redis.delete(key)


class Channel(ABC):
    name: ClassVar[str]
    max_text: ClassVar[int] = 4000  # one message's limit on the platform (see text_length)
    connection_bound: ClassVar[bool] = False
    # ``text``'s size as the platform counts it against ``max_text``: characters, unless an
    # adapter says otherwise (``len`` itself: text.split_text cuts it without measuring).
    text_length = staticmethod(len)

    def __init__(self, ctx: ChannelContext) -> None:
        self.ctx = ctx
        self._receiving: set[asyncio.Task[Accepted]] = set()  # see receive_in_time
        self._loops: set[asyncio.Task[None]] = set()  # see background

    @property
    def config(self) -> ChannelConfig:
        """This channel's section of the live config (read it per use: reloads swap it)."""
        return getattr(self.ctx.live.config.channels, self.name)

    def check_config(self) -> None:
        """Raise :class:`ChannelError` naming what is missing (before :meth:`start`)."""
        return None  # optional: most adapters need nothing here

    async def start(self) -> None:
        """Connect, or start polling; long-running work goes in tasks this method starts.
        Raise :class:`ChannelError` when the platform refuses the credentials."""
        return None  # optional: most adapters need nothing here

    async def start_sending(self) -> None:
        """Prepare what :meth:`send` needs, without receiving anything (``clawctl channel
        test`` sends from outside the ingress). Adapters whose send works unprepared need
        nothing here."""
        return None

    async def stop(self) -> None:
        """Close connections and cancel the tasks :meth:`start` started. This one cancels
        what :meth:`receive_in_time` left running: an adapter that uses it and has a stop of
        its own calls ``super().stop()``."""
        for task in list(self._receiving):
            task.cancel()

    @abstractmethod
    async def send(self, chat_id: str, text: str, *, reply_to: str | None = None) -> None:
        """Send one part (at most ``max_text``, as ``text_length`` counts); raise
        :class:`SendError`."""

    def background(self, loop: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``loop``, which lives as long as the channel (a poller, a gateway connection,
        a renewal), in a task the manager watches: one that ends while the channel runs (an
        exception no handler foresaw, a cancel a library let out) has the channel stopped
        and started again, with backoff, instead of leaving it deaf (manager.py)."""
        task = asyncio.create_task(loop, name=f"{self.name}-{name}")
        self._loops.add(task)
        return task

    async def loop_ended(self) -> str:
        """Wait until a task of :meth:`background` ends, and say which and how (a channel
        without one waits until cancelled)."""
        while True:
            for task in self._loops:
                if task.done():
                    return _how_it_ended(task)
            if not self._loops:
                await asyncio.get_running_loop().create_future()  # never set
            await asyncio.wait(self._loops, return_when=asyncio.FIRST_COMPLETED)

    async def end_loops(self) -> None:
        """Cancel what :meth:`background` started and is still running, and forget it all
        (the manager calls this after :meth:`stop`, so a restart never runs two pollers)."""
        loops, self._loops = list(self._loops), set()
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def receive(self, message: InboundMessage) -> Accepted:
        """Hand a platform event, made an ``InboundMessage``, to the fleet."""
        accepted = await self.ctx.accept(message)
        if accepted.status == "queued":
            await self.on_accepted(message)
        return accepted

    async def receive_in_time(self, message: InboundMessage, *, within: float) -> bool:
        """:meth:`receive`, for a platform that wants its push answered within a few
        seconds: False when the message was not stored (answer so that the platform pushes
        it again); True when it was, or is still being handled after ``within`` seconds (a
        slow slash command), which then finishes in the background, a failure logged."""
        task = asyncio.create_task(self.receive(message))
        self._receiving.add(task)  # referenced until done, so it is not garbage-collected
        task.add_done_callback(self._received)
        done, _ = await asyncio.wait({task}, timeout=within)
        return not done or (not task.cancelled() and task.exception() is None)

    def _received(self, task: asyncio.Task[Accepted]) -> None:
        self._receiving.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(
                f"{self.name} message not stored", channel=self.name, error=repr(task.exception())
            )

    def holds(self, chat_id: str) -> bool:
        """Whether this replica holds an open connection of ``chat_id`` (adapters that set
        ``connection_bound``; the delivery asks when Redis lost the chat's mark)."""
        return False

    async def release_connection(self, chat_id: str, held_again: Callable[[], bool]) -> None:
        """Drop this replica's mark of ``chat_id``'s connection, which closed. The mark is
        the replica's, not the connection's: a new connection for the chat that registered
        while it was being dropped (a client reconnecting at once) has it put back, else
        replies to the chat would be dropped as having no connection until the next renewal.
        ``held_again()`` says whether one did."""
        try:
            await self.ctx.drop_connection(self.name, chat_id)
            if held_again():
                await self.ctx.hold_connection(self.name, chat_id)
        except RedisError as exc:
            self._log.warning("cannot release a connection's mark", channel=self.name,
                              chat_id=chat_id, error=str(exc))  # fmt: skip

    async def keep_holding(self, held: Callable[[], Iterable[str]]) -> None:
        """Renew the marks of the chats whose connections this replica holds (``held()``)
        every third of ``CONNECTION_TTL_SEC``, until cancelled; run it in a task from
        :meth:`start` (adapters that set ``connection_bound``)."""
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            await asyncio.sleep(CONNECTION_TTL_SEC / 3)
            for chat_id in list(held()):
                try:
                    await self.ctx.hold_connection(self.name, chat_id)
                except RedisError as exc:
                    self._log.warning("cannot renew a held connection", channel=self.name,
                                      chat_id=chat_id, error=str(exc))  # fmt: skip
                    break

    @property
    def _log(self) -> Any:
        """The adapter module's logger: what the base logs for an adapter is logged as its."""
        return structlog.get_logger(type(self).__module__)

    def routes(self) -> list[BaseRoute]:
        """Webhook routes, mounted under ``/webhooks/<name>``."""
        return []

    async def on_accepted(self, message: InboundMessage) -> None:
        """A message of this channel was queued for the agent (e.g. start a typing
        indicator)."""
        return None  # optional: most adapters need nothing here

    async def on_delivered(self, message_id: str, chat_id: str) -> None:
        """The reply to ``message_id`` went out (e.g. stop the typing indicator)."""
        return None  # optional: most adapters need nothing here

    def describe(self) -> dict[str, Any]:
        """State for ``clawctl status`` and logs (never secrets)."""
        return {}


def _how_it_ended(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return f"{task.get_name()} was cancelled"
    error = task.exception()
    return f"{task.get_name()} failed: {error!r}" if error else f"{task.get_name()} returned"
