"""The campaign over the parsers: hypothesis throws generated text at each one.

Property: a parser answers with its result or its own documented error (whose message says
what is wrong), never another exception. Slash commands run whole (``run_command``, the
registry the ingress and workers share) against a real redis-server as a sender who is not
an admin; tools run through ``ToolRegistry.run`` (pydantic params, then the tool) with
random JSON, in a workspace of their own with the fleet's Redis: the result is a string,
and not a tool's crash ("Error: <tool> failed: <exception>").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beat_schedules.cron_schedule import ScheduleError, at, cron, every, parse_cron
from claw_worker.commands import registry as commands
from claw_worker.commands.registry import CommandContext, parse_command, run_command
from claw_worker.config import Config
from claw_worker.config.store import (
    ConfigError,
    get_path,
    parse_value,
    set_path,
    split_path,
    validate_config_data,
)
from claw_worker.tools import ToolContext, default_tools
from claw_worker.work.lock_keys import KeyDeclarationError, declared_keys
from tests.campaign import record
from tests.fixtures.redis_server import RedisServer

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])  # fmt: skip
# Outside the random run: exec runs its text in a shell (the exec campaign tries that on
# purpose), web_fetch and web_search would send random names to DNS.
UNFUZZED_TOOLS = {"exec", "web_fetch", "web_search"}

words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | words,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words, inner, max_size=4),
    max_leaves=12,
)


class Tally(Counter[str]):
    def outcome(self, rejected: bool) -> None:
        self["tried"] += 1
        self["rejected"] += rejected

    def record(self, area: str) -> None:
        record(area, tried=self["tried"], rejected=self["rejected"])


# -- slash commands -------------------------------------------------------------------------


def command_texts() -> st.SearchStrategy[str]:
    names = sorted(commands.COMMANDS)
    known = st.sampled_from(names)
    invented = st.from_regex(r"/[A-Za-z_]{1,12}(@[a-z]{1,8})?", fullmatch=True)
    args = st.lists(words | st.sampled_from(["on", "off", "status", "every", "get", "set", "list",
                                              "ready", "-1", "0", "999999999999", "gateway.token",
                                              "tools.exec", '{"a":', "\x00", "..", "*"]),
                    max_size=5)  # fmt: skip
    return st.builds(lambda n, a, pad: pad + " ".join([n, *a]), known | invented, args,
                     st.sampled_from(["", " ", "\n", "\t"]))  # fmt: skip


def test_slash_commands(redis_server: RedisServer) -> None:
    config = Config.model_validate({"redis": {"url": redis_server.url}})
    tally = Tally()

    async def answer(text: str) -> str | None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            ctx = CommandContext(client, config, "api:fuzz", channel="api", sender_id="fuzzer",
                                 chat_id="fuzz")  # fmt: skip
            return await run_command(ctx, text)
        finally:
            await client.aclose()

    @FUZZ
    @given(text=command_texts() | words)
    def one(text: str) -> None:
        parsed = parse_command(text)
        if parsed is not None:
            assert parsed[0].startswith("/") and parsed[0] == parsed[0].lower()
        reply = asyncio.run(answer(text))
        assert reply is None or isinstance(reply, str)
        assert reply is None or "Traceback" not in reply
        refused = reply is not None and any(
            w in reply.lower() for w in ("unknown command", "admin", "usage", "not ", "invalid")
        )
        tally.outcome(refused)

    one()
    tally.record("parsers: slash commands")


# -- config paths and values ---------------------------------------------------------------


def dotted_paths() -> st.SearchStrategy[str]:
    real = st.sampled_from(sorted(_paths(Config().model_dump(mode="json"))))
    segment = st.from_regex(r"[a-z_]{1,10}", fullmatch=True) | words
    made_up = st.lists(segment, min_size=1, max_size=4).map(".".join)
    return real | made_up | real.flatmap(lambda p: segment.map(lambda s: f"{p}.{s}"))


def _paths(node: Any, prefix: str = "") -> set[str]:
    found = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, value in node.items():
            found |= _paths(value, f"{prefix}.{key}" if prefix else key)
    return found


def raw_values() -> st.SearchStrategy[str]:
    as_json = json_values.map(json.dumps)
    return as_json | words | st.sampled_from(["1e999", "-0", "[" * 200, '"\\ud800"', "NaN"])


def test_config_paths_and_values() -> None:
    base = Config().model_dump(mode="json")
    tally = Tally()

    leaves = sorted(p for p in _paths(base) if not isinstance(get_path(Config(), p), dict))
    # Half random pairs, half a real setting given its own value again (must be accepted).
    unchanged = st.sampled_from(leaves).map(lambda p: (p, json.dumps(get_path(Config(), p))))
    pairs = st.tuples(dotted_paths(), raw_values()) | unchanged

    @FUZZ
    @given(pair=pairs)
    def one(pair: tuple[str, str]) -> None:
        dotted, raw = pair
        try:
            split_path(dotted)
            get_path(Config(), dotted)
            config = validate_config_data(set_path(base, dotted, parse_value(raw)))
        except ConfigError as exc:
            assert str(exc) and "Traceback" not in str(exc)
            tally.outcome(True)
            return
        assert isinstance(config, Config)
        tally.outcome(False)

    one()
    tally.record("parsers: config paths and values")


# -- [keys: ...] ---------------------------------------------------------------------------


def key_declarations() -> st.SearchStrategy[str]:
    item = st.builds(lambda k, v: f"{k}:{v}", st.sampled_from(
        ["file", "repo", "path", "url", "host", "db", "FILE", "x", ""]), words)  # fmt: skip
    sep = st.sampled_from([",", ";", " ", ", ", "\n"])
    body = st.builds(lambda items, s: s.join(items), st.lists(item | words, max_size=40), sep)
    return st.builds(lambda before, b, after: f"{before}[keys: {b}]{after}", words, body, words)


def test_resource_key_declarations() -> None:
    tally = Tally()

    @FUZZ
    @given(text=key_declarations() | words)
    def one(text: str) -> None:
        try:
            keys = declared_keys(text)
        except KeyDeclarationError as exc:
            assert "key" in str(exc)
            tally.outcome(True)
            return
        assert keys is None or all(isinstance(k, str) and k for k in keys)
        tally.outcome(False)

    one()
    tally.record("parsers: [keys: ...]")


# -- cron expressions, --every and --at ------------------------------------------------------


def cron_texts() -> st.SearchStrategy[str]:
    token = st.sampled_from(["*", "*/0", "*/5", "0", "59", "60", "1-5", "5-1", "MON", "jan",
                             "L", "?", "#", ",", "-", "1,2,,3", "99999999999999999999"])  # fmt: skip
    field = st.lists(token | words, min_size=1, max_size=3).map(",".join)
    return st.lists(field, min_size=0, max_size=7).map(" ".join) | words


def test_cron_expressions_every_and_at() -> None:
    now = time.time()
    tally = Tally()
    zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Mars/Olympus", "",
                             "../../etc/passwd", "UTC+25"])  # fmt: skip

    @FUZZ
    @given(expr=cron_texts(), tz=zones, seconds=st.integers() | st.booleans(),
           when=words | st.datetimes().map(lambda d: d.isoformat()))  # fmt: skip
    def one(expr: str, tz: str, seconds: int, when: str) -> None:
        for attempt in (lambda: parse_cron(expr), lambda: cron(expr, tz=tz, now=now),
                        lambda: every(seconds, now=now), lambda: at(when, tz=tz, now=now)):  # fmt: skip
            try:
                attempt()
            except ScheduleError as exc:
                assert str(exc)
                tally.outcome(True)
            else:
                tally.outcome(False)

    one()
    tally.record("parsers: cron, --every, --at")


# -- tool arguments ------------------------------------------------------------------------


def test_tool_arguments(redis_server: RedisServer, tmp_path: Path) -> None:
    config = Config.model_validate({"redis": {"url": redis_server.url}})
    registry = default_tools(config)
    names = sorted(set(registry._tools) - UNFUZZED_TOOLS)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("a note\n")
    client = redis.Redis.from_url(redis_server.url)
    crashes: list[str] = []
    tally = Tally()

    def arguments(name: str) -> st.SearchStrategy[Any]:
        fields = sorted(registry._tools[name].Params.model_json_schema().get("properties", {}))
        if not fields:
            return st.just({}) | json_values
        known = st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields))
        return known | json_values | words  # a mapping of its fields, or anything at all

    @FUZZ
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(names))
        args = data.draw(arguments(name))
        ctx = ToolContext(workspace, "fuzz:1", config, redis=client, message_id="m-fuzz")
        result = registry.run(name, args if isinstance(args, dict | str) else json.dumps(args), ctx)
        assert isinstance(result, str)
        if result.startswith(f"Error: {name} failed:"):
            crashes.append(f"{name}({args!r}): {result[:300]}")
        tally.outcome(result.startswith("Error:"))

    try:
        one()
    finally:
        client.close()
    record("parsers: tool arguments", tried=tally["tried"], rejected=tally["rejected"],
           server_errors=len(crashes))  # fmt: skip
    assert not crashes, "\n".join(crashes[:10])
    assert not any(workspace.parent.glob("escape*"))
