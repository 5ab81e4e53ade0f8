"""``clawctl gateway autonomy status|on|off``: autonomous mode, switched at run time.

The same state the chat's ``/autonomy`` command and the beat tick use (the hash
``constants.AUTONOMY``, ``claw_worker/autonomy_state.py``), written straight to the
fleet's Redis: no restart or reload. ``on`` works for the chat whose user wrote last, or
for ``--session``; a running fleet's next autonomy tick picks it up.
"""

from __future__ import annotations

import time

import click
import redis

from claw_worker import constants as k
from claw_worker.autonomy_state import (
    Autolearn,
    Autonomy,
    Chat,
    describe_autolearn,
    describe_autonomy,
    human,
    last_active,
    own_chat,
    parse_interval,
)
from claw_worker.cli._common import CliError, load
from claw_worker.config import Config
from claw_worker.redis_conn import client, redis_url

MAX_SESSION_CHARS = 512


def _redis(config: Config) -> redis.Redis:
    conn = client(redis_url(config), socket_timeout=5, socket_connect_timeout=2)
    conn.ping()  # a clear error now rather than after half the work
    return conn


def session_chat(conn: redis.Redis, session_key: str) -> Chat | None:
    """The chat of a session, from its newest message's record (kept for a week), or None."""
    run_id = conn.get(k.latest_run_key(session_key))
    message_id = conn.hget(k.run_key(run_id), "message_id") if run_id else None
    if not message_id:
        return None
    channel, chat_id = conn.hmget(k.message_key(session_key, message_id), "channel", "chat_id")
    return own_chat(channel or "", chat_id or "", session_key)


@click.group("autonomy")
def autonomy() -> None:
    """Autonomous mode: rounds of work on a chat's unfinished tasks while its user is away."""


@autonomy.command("status")
def status_cmd() -> None:
    """Whether autonomous mode (and auto-learning) is on, for which chat, and its counts."""
    config = load()
    raw, control = _redis(config).hgetall(k.AUTONOMY), config.agents.defaults.runtime_control
    click.echo(describe_autonomy(Autonomy.from_hash(raw), control, time.time()))
    click.echo(describe_autolearn(Autolearn.from_hash(raw), control, time.time()))


@autonomy.command("on")
@click.option("--every", "every", default="", metavar="INTERVAL",
              help="at most one round this often: 30m, 2h, 90s, '45 minutes' "
                   "(default: runtime_control.autonomy_min_run_interval_sec)")  # fmt: skip
@click.option("--session", "session", default=None, metavar="KEY",
              help="the session to work for (default: the chat whose user wrote last)")  # fmt: skip
def on_cmd(every: str, session: str | None) -> None:
    """Turn autonomous mode on (again, with its counts reset)."""
    try:
        interval = parse_interval(every.split())
    except ValueError as exc:
        raise CliError(f"--every: {exc}") from None
    session = None if session is None else session.strip()
    if session == "":
        raise CliError(
            "--session: empty; give a session key (a chat's /status shows it, e.g. "
            "telegram:123456789), or leave --session out for the chat whose user wrote last"
        )
    if session and len(session) > MAX_SESSION_CHARS:
        raise CliError(f"--session: at most {MAX_SESSION_CHARS} characters")
    config = load()
    conn = _redis(config)
    if session:
        chat = session_chat(conn, session)
        if chat is None:
            raise CliError(
                f"--session: no recent message in session {session!r} from a chat that can "
                "receive messages (the HTTP API cannot); /status in a chat shows its session"
            )
    else:
        chat = last_active(conn.get(k.LAST_ACTIVE))
        if chat is None:
            raise CliError(
                "no chat to work for: nobody has written to the fleet in a chat yet; "
                "write to the agent first, or pass --session KEY"
            )
    control = config.agents.defaults.runtime_control
    conn.hset(k.AUTONOMY, mapping=Autonomy.start(chat, interval, time.time()).to_hash())
    click.echo(
        f"autonomous mode on for {chat.label()}: a round at most every "
        f"{human(max(interval, control.autonomy_min_run_interval_sec))} once its user has "
        f"been away {human(control.autonomy_idle_threshold_sec)}"
    )


@autonomy.command("off")
def off_cmd() -> None:
    """Turn autonomous mode off (a round already running finishes)."""
    conn = _redis(load())
    state = Autonomy.from_hash(conn.hgetall(k.AUTONOMY))
    if not state.enabled:
        click.echo("autonomous mode is already off")
        return
    conn.hset(k.AUTONOMY, mapping=state.stop("turned off with clawctl", time.time()).to_hash())
    click.echo("autonomous mode off")
