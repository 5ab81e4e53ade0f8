"""``clawctl agent [-m TEXT]``: talk to the agent from the terminal, with the fleet's runtime.

The same ``Agent`` class, tools, workspace and Redis-held session history as the workers,
so a conversation started here can be continued from a chat channel with the same session
key and the other way round. With ``redis.url`` empty the embedded Redis is started for the
duration of the command (and stopped after, if this command started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from claw_worker.cli._common import CliError, describe_error, load, raw_bytes
from claw_worker.config import Config, ConfigError
from claw_worker.config.jsontext import is_text
from claw_worker.config.local import check_local
from claw_worker.config.paths import claw_home
from claw_worker.contract import InboundMessage, session_name_error
from claw_worker.embedded_redis import ensure_embedded
from claw_worker.redis_conn import client

EXIT_WORDS = frozenset({"exit", "quit", "/exit", "/quit"})
HISTORY_LENGTH = 1000
PROMPT = "you> "


def provider_configured(config: Config) -> bool:
    providers = config.providers
    return bool(providers.proxy.api_base) or any(p.api_base for p in providers.proxies.values())


@contextlib.contextmanager
def redis_for(config: Config) -> Iterator[str]:
    """The Redis URL to use; an embedded server lives as long as this context."""
    if config.redis.url:
        yield config.redis.url
        return
    server = ensure_embedded(daemonize=False)
    try:
        yield server.url
    finally:
        server.stop()  # does nothing when the server was already running (not ours)


def history_file() -> Path:
    return claw_home() / "agent_history"


@contextlib.contextmanager
def readline_history() -> Iterator[None]:
    """Arrow-key editing and history across sessions, when readline is available."""
    try:
        import readline
    except ImportError:  # e.g. a Python built without it: plain input() still works
        yield
        return
    path = history_file()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def repl(turn: Callable[[str], str]) -> None:
    click.echo("clawfleet agent: type a message; `exit` or Ctrl-D leaves, Ctrl-C cancels a turn.")
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Bytes that are not UTF-8 arrive as surrogates (refused per line below) instead of
        # ending the conversation with a decoding error.
        sys.stdin.reconfigure(errors="surrogateescape")
    with readline_history():
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:  # at the prompt: drop the line being typed
                click.echo()
                continue
            text = line.strip()
            if not text:
                continue
            if not is_text(text):
                click.echo(
                    f"Error: that line is not UTF-8 text ({raw_bytes(text)}); not sent", err=True
                )
                continue
            if text.lower() in EXIT_WORDS:
                return
            try:
                reply = turn(text)
            except KeyboardInterrupt:
                click.echo("\n(cancelled)")
                continue
            except CliError as exc:  # one failed turn does not end the conversation
                click.echo(f"Error: {exc.message}", err=True)
                continue
            click.echo(f"\n{reply}\n")


def local_command(config: Config, url: str, session: str, text: str) -> str | None:
    """Slash commands and run requests, answered by the same registry as in the fleet."""
    from claw_worker.commands import CommandContext, match_intent, parse_command, run_command

    if parse_command(text) is None and match_intent(text, config) is None:
        return None  # the common case: a plain message, no event loop needed

    async def answer() -> str | None:
        import redis.asyncio as aioredis

        async_client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await run_command(
                CommandContext(async_client, config, session, admin=True), text
            )
        finally:
            await async_client.aclose()

    return asyncio.run(answer())


@click.command()
@click.option("-m", "--message", help="Send one message, print the reply and exit.")
@click.option(
    "--session",
    default="cli:local",
    show_default=True,
    help="Session key: the conversation history to continue.",
)
@click.pass_context
def agent(ctx: click.Context, message: str | None, session: str) -> None:
    """Chat with the agent (interactive without -m)."""
    config = load()
    if message is not None and not message.strip():
        raise CliError("the message is empty; pass some text with -m")
    error = session_name_error(session)  # the same rule as the HTTP API's (any namespace)
    if error is not None:
        raise CliError(f"--{error}, e.g. cli:local")
    if not provider_configured(config):
        raise CliError(config.agents.defaults.texts.provider_not_configured)
    try:
        check_local(config)  # the workspace and log directory it names, on this host
    except ConfigError as exc:
        raise CliError(describe_error(exc)) from None
    debug = bool(ctx.obj and ctx.obj.get("debug"))

    from claw_worker.agent import Agent
    from claw_worker.logs import setup_logging
    from claw_worker.providers.base import ProviderError

    # Logs go to the file; on the terminal only with --debug, so replies stay readable.
    setup_logging(config, "agent", console=debug, debug=debug)
    with redis_for(config) as url:
        redis_client = client(url)
        try:
            redis_client.ping()
            runtime = Agent(config, redis_client)

            def turn(text: str) -> str:
                command_reply = local_command(config, url, session, text)
                if command_reply is not None:
                    return command_reply
                inbound = InboundMessage(
                    channel="cli",
                    chat_id="local",
                    sender_id="local",
                    session_key=session,
                    text=text,
                )
                try:
                    return runtime.handle(inbound).text
                except ProviderError as exc:
                    raise CliError(f"the LLM provider failed: {exc}") from None

            if message is not None:
                click.echo(turn(message))
            else:
                repl(turn)
        finally:
            redis_client.close()
