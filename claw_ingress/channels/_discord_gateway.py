"""The Discord channel's Gateway client: one websocket session, kept alive and resumed.

As Discord documents it (topics/gateway, v10, JSON): Hello (op 10) sets the heartbeat
interval; a Heartbeat (op 1, the last sequence number) goes out every interval, the first
after a random part of it, and at once when Discord asks for one; a Heartbeat ACK (op 11)
must arrive before the next beat, else the connection is a zombie: closed (not with
1000/1001, which would end the session) and resumed. Identify (op 2: token, intents) opens a
session; Ready gives its ``session_id``, ``resume_gateway_url`` and the bot's own user.
After a drop or a Reconnect (op 7) the client reconnects to ``resume_gateway_url`` and
sends Resume (op 6: session_id, last sequence): Discord replays what was missed. Invalid
Session (op 9) with ``d`` false, or a close code that ends the session, means a new
Identify. The sequence number moves past a dispatch only once it was handled: one the
handler could not store (:class:`NotHandled`, e.g. Redis is away) closes the connection and
resumes from before it, so Discord replays it. Close codes no retry can fix (bad token, disallowed intents, ...) are logged with
what to do and retried only after ``FATAL_RETRY_SEC``: Discord resets a bot's token after
1000 Identify calls in a day.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from claw_ingress.cancel import stop_if_cancelled

log = structlog.get_logger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    0, 1, 2, 6, 7, 9, 10, 11,
)  # fmt: skip
QUERY = {"v": "10", "encoding": "json"}
FATAL_CLOSE = {  # close code: what the operator must do
    4004: "authentication failed: the bot token is wrong (channels.discord.token)",
    4010: "invalid shard",
    4011: "sharding required: the bot is in too many guilds for one connection",
    4012: "invalid API version",
    4013: "invalid intents (channels.discord.intents)",
    4014: "disallowed intents: enable Message Content under Bot → Privileged Gateway Intents "
    "in the Developer Portal, or remove it from channels.discord.intents (4608)",
}
NEW_SESSION_CLOSE = frozenset({4003, 4007, 4009})  # the session is gone: Identify again
OWN_CLOSE = 4000  # how this client closes to reconnect: the session stays resumable
FATAL_RETRY_SEC = 600.0
MAX_BACKOFF_SEC = 120.0
STABLE_SEC = 30.0  # up this long, a connection resets the backoff even if it needs Identify
OPEN_TIMEOUT_SEC = 15.0
HELLO_TIMEOUT_SEC = 20.0  # a connection that never says Hello is given up
CLOSE_TIMEOUT_SEC = 3.0
MAX_EVENT_BYTES = 16 * 2**20

OnDispatch = Callable[[str, Any], Awaitable[None]]


class NotHandled(Exception):
    """Raised by the dispatch handler for an event it could not handle now (its store is
    away): the gateway resumes from before the event, so that Discord sends it again."""


class GatewayFatal(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"close code {code}: {reason}")
        self.code, self.reason = code, reason


@dataclass
class _Beat:
    acked: bool = True  # the last heartbeat was acknowledged


class Gateway:
    def __init__(
        self,
        *,
        fetch_url: Callable[[], Awaitable[str]],
        token: str,
        intents: int,
        on_dispatch: OnDispatch,
        user_agent: str,
    ) -> None:
        self.fetch_url = fetch_url  # GET /gateway/bot (raises ChannelError on a bad token)
        self.token, self.intents = token, intents
        self.on_dispatch = on_dispatch  # every dispatch but Ready/Resumed, in order
        self.user_agent = user_agent
        self.url = ""  # from GET /gateway/bot; fetched again after a failure
        self.session_id = ""
        self.resume_url = ""
        self.seq: int | None = None
        self.user_id = ""  # the bot's own user, from Ready
        self.state = "stopped"

    async def run(self) -> None:
        """Connect, converse, reconnect: forever, with backoff, never raising. A connection
        that reached Ready and can be resumed resets the backoff; one that needs a new
        Identify only if it stayed up ``STABLE_SEC`` (Identify is limited to 1000 a day)."""
        delay = 1.0
        loop = asyncio.get_running_loop()
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            started, stable = loop.time(), False
            try:
                if not self.url:
                    self.url = await self.fetch_url()
                ready = await self._connect()
                stable = ready and (bool(self.session_id) or loop.time() - started >= STABLE_SEC)
                wait = random.uniform(0, 1) if stable else delay
                log.info("discord gateway closed; reconnecting", channel="discord",
                         resume=bool(self.session_id), retry_in=round(wait, 2))  # fmt: skip
            except asyncio.CancelledError:
                raise
            except NotHandled as exc:
                self.state, wait = "disconnected", delay
                log.warning("discord event not stored; resuming so that Discord replays it",
                            channel="discord", error=str(exc), retry_in=wait)  # fmt: skip
            except GatewayFatal as exc:
                self.state, wait, self.url = "refused", FATAL_RETRY_SEC, ""
                self._forget_session()
                log.error("discord gateway refused the bot", channel="discord",
                          close_code=exc.code, error=exc.reason, retry_in=wait)  # fmt: skip
            except Exception as exc:  # unreachable, handshake refused, bad token, bad frame
                self.state, wait, self.url = "disconnected", delay, ""
                log.warning("discord gateway connection failed", channel="discord",
                            error=str(exc) or repr(exc), retry_in=wait)  # fmt: skip
            delay = 1.0 if stable else min(delay * 2, MAX_BACKOFF_SEC)
            await asyncio.sleep(wait)

    async def _connect(self) -> bool:
        """One websocket connection; True when it reached Ready or Resumed."""
        base = self.resume_url if self.session_id and self.resume_url else self.url
        self.state = "connecting"
        try:
            ws = await connect(
                _with_query(base), open_timeout=OPEN_TIMEOUT_SEC, ping_interval=None,
                close_timeout=CLOSE_TIMEOUT_SEC, max_size=MAX_EVENT_BYTES,
                user_agent_header=self.user_agent,
            )  # fmt: skip
        except Exception:
            self.resume_url = ""  # resume through the main URL next time
            raise
        beat, ready = _Beat(), False
        heart: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_SEC) as hello_due:
                async for raw in ws:
                    event = json.loads(raw)
                    op, data = event.get("op"), event.get("d")
                    if op == DISPATCH:  # handled first: NotHandled keeps the old seq
                        ready = await self._dispatch(event.get("t"), data) or ready
                        if event.get("s") is not None:
                            self.seq = event["s"]
                    elif op == HELLO:
                        hello_due.reschedule(None)
                        interval = float(data["heartbeat_interval"]) / 1000
                        heart = asyncio.create_task(self._heartbeat(ws, interval, beat))
                        await ws.send(json.dumps(self._hello_answer()))
                    elif op == HEARTBEAT:
                        await ws.send(json.dumps({"op": HEARTBEAT, "d": self.seq}))
                    elif op == HEARTBEAT_ACK:
                        beat.acked = True
                    elif op == RECONNECT:
                        log.info("discord gateway asked to reconnect", channel="discord")
                        break
                    elif op == INVALID_SESSION:
                        log.warning("discord gateway invalidated the session", channel="discord",
                                    resumable=data is True)  # fmt: skip
                        if data is not True:
                            self._forget_session()
                        if heart is not None:
                            heart.cancel()
                        await ws.close(OWN_CLOSE, "invalid session")
                        await asyncio.sleep(random.uniform(1, 5))  # as the docs ask
                        break
        except TimeoutError:
            raise ConnectionError(f"no Hello within {HELLO_TIMEOUT_SEC:g} s") from None
        except ConnectionClosed as exc:
            self._closed(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
        except asyncio.CancelledError:
            await ws.close(1000, "stopping")  # 1000 ends the session: the bot goes offline
            raise
        else:
            self._closed(ws.close_code, ws.close_reason or "")
        finally:
            if heart is not None:
                heart.cancel()
            self.state = "disconnected"
            await ws.close(OWN_CLOSE, "reconnecting")
        return ready

    def _closed(self, code: int | None, reason: str) -> None:
        if code in FATAL_CLOSE:
            raise GatewayFatal(code, FATAL_CLOSE[code])
        if code in NEW_SESSION_CLOSE:
            self._forget_session()
        if code is not None and code != OWN_CLOSE:
            log.info("discord gateway closed the connection", channel="discord",
                     close_code=code, reason=reason[:200])  # fmt: skip

    def _hello_answer(self) -> dict[str, Any]:
        if self.session_id:
            resume = {"token": self.token, "session_id": self.session_id, "seq": self.seq}
            return {"op": RESUME, "d": resume}
        properties = {"os": sys.platform, "browser": "clawfleet", "device": "clawfleet"}
        identify = {"token": self.token, "intents": self.intents, "properties": properties}
        return {"op": IDENTIFY, "d": identify}

    async def _heartbeat(self, ws: ClientConnection, interval: float, beat: _Beat) -> None:
        await asyncio.sleep(interval * random.random())
        while True:
            stop_if_cancelled()  # a swallowed cancel still ends the loop (cancel.py)
            if not beat.acked:
                log.warning("discord gateway: no heartbeat ACK (zombie connection); resuming",
                            channel="discord")  # fmt: skip
                await ws.close(OWN_CLOSE, "heartbeat ACK missing")
                return
            beat.acked = False
            try:
                await ws.send(json.dumps({"op": HEARTBEAT, "d": self.seq}))
            except ConnectionClosed:
                return
            await asyncio.sleep(interval)

    def _forget_session(self) -> None:
        self.session_id, self.resume_url, self.seq = "", "", None

    async def _dispatch(self, kind: Any, data: Any) -> bool:
        """Handle one event; True when it (re)established the session."""
        if kind == "READY":
            self.session_id = str(data["session_id"])
            self.resume_url = str(data.get("resume_gateway_url") or "")
            user = data.get("user") or {}
            self.user_id, self.state = str(user.get("id", "")), "ready"
            log.info("discord gateway ready", channel="discord", bot_user_id=self.user_id,
                     bot_name=user.get("username"))  # fmt: skip
            return True
        if kind == "RESUMED":
            self.state = "ready"
            log.info("discord gateway resumed", channel="discord", seq=self.seq)
            return True
        await self.on_dispatch(str(kind), data)
        return False


def _with_query(url: str) -> str:
    """The gateway URL with the API version and encoding this client speaks."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(QUERY), ""))
