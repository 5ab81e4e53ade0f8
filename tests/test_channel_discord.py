"""The Discord channel end to end: the real ingress (its Gateway client and REST sender),
real Celery workers, a real redis-server and the scripted LLM, against a loopback Discord
(tests/platforms/discord_api.py) that speaks the Gateway over a real websocket and the REST
routes in Discord's wire format."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from claw_ingress.channels import builtin_channels
from tests.fixtures.procs import wait_for
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer, last_user_text
from tests.platforms.discord_api import BOT_ID, BOT_NAME, BOT_TOKEN, DiscordAPI, Post, snowflake

ALICE = "100000000000000001"
DM = "500000000000000001"
GUILD = "600000000000000001"
GUILD_CHANNEL = "600000000000000002"
INTENTS = (1 << 9) | (1 << 12) | (1 << 15)  # GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT


@pytest.fixture
def discord_api(request: pytest.FixtureRequest) -> Iterator[DiscordAPI]:
    """The loopback Discord; heartbeat_interval 300 ms unless parametrized (indirect)."""
    api = DiscordAPI(heartbeat_ms=getattr(request, "param", 300)).start()
    try:
        yield api
    finally:
        api.stop()


def start_fleet(fleet_factory: Any, api: DiscordAPI, **overrides: Any) -> Any:
    fleet = fleet_factory(**{
        "channels__discord__enabled": True,
        "channels__discord__token": BOT_TOKEN,
        "channels__discord__api_base": api.api_base,
        "channels__discord__dm_policy": "allowlist",
        "channels__discord__allow_from": [ALICE],
        "channels__discord__rate_per_sec": 20.0,
        **overrides,
    })  # fmt: skip
    fleet.start_worker()
    fleet.start_ingress()
    return fleet


def replies(api: DiscordAPI, channel_id: str) -> list[Post]:
    return [post for post in api.posts if post.channel_id == channel_id]


def answered(api: DiscordAPI, channel_id: str, content: str, *, timeout: float = 30) -> Post:
    """Wait for the bot's message ``content`` in ``channel_id``."""

    def found() -> Post | None:
        return next((p for p in replies(api, channel_id) if p.body["content"] == content), None)

    return wait_for(found, timeout=timeout, what=f"{content!r} posted to {channel_id}")


def user_texts(llm: LLMServer) -> list[str]:
    return [last_user_text(body) for body in llm.requests]


def log_events(fleet: Any) -> list[dict[str, Any]]:
    events = []
    for path in (fleet.home.path / "logs").glob("ingress*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def logged(fleet: Any, event: str, **fields: Any) -> dict[str, Any] | None:
    for entry in log_events(fleet):
        if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
            return entry
    return None


def all_output(fleet: Any) -> str:
    logs = [p.read_text(errors="replace") for p in (fleet.home.path / "logs").glob("ingress*")]
    return fleet.output("ingress") + "".join(logs)


def test_identify_heartbeats_and_a_dm_round_trip(
    fleet_factory: Any, discord_api: DiscordAPI, llm_server: LLMServer
) -> None:
    api = discord_api
    start_fleet(fleet_factory, api)
    wait_for(lambda: api.connected, timeout=30, what="the bot to identify")
    [identify] = api.identifies
    assert identify["token"] == BOT_TOKEN
    assert identify["intents"] == INTENTS
    assert set(identify["properties"]) == {"os", "browser", "device"}
    assert api.paths == ["/?v=10&encoding=json"]
    assert api.gateway_bot_calls == 1

    # Heartbeats every heartbeat_interval (300 ms), each carrying the last sequence (Ready's).
    wait_for(lambda: len(api.heartbeats) >= 6, timeout=10, what="six heartbeats")
    times = [at for at, _seq in api.heartbeats[:6]]
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert 0.25 <= gaps[len(gaps) // 2] <= 0.45, gaps  # the median
    assert all(0.15 <= gap <= 1.0 for gap in gaps), gaps
    assert api.heartbeats[-1][1] == 1

    message_id = api.message_create(DM, "hello bot")
    post = answered(api, DM, "echo: hello bot")
    assert post.body["message_reference"] == {"message_id": message_id, "fail_if_not_exists": False}
    assert post.body["allowed_mentions"] == {"parse": []}  # the agent can ping no one
    assert post.headers["authorization"] == f"Bot {BOT_TOKEN}"
    assert post.headers["user-agent"].startswith("DiscordBot (")
    assert DM in api.typing  # "typing..." while the agent worked
    # A later heartbeat acknowledges the message's sequence number.
    wait_for(lambda: api.heartbeats[-1][1] == api.seq, timeout=5, what="heartbeat with last seq")

    # An attachment alone still reaches the agent (its URL in the message's media).
    attachment = {"id": snowflake(), "filename": "cat.png", "size": 1024,
                  "url": "https://cdn.discordapp.com/attachments/1/2/cat.png",
                  "proxy_url": "https://media.discordapp.net/attachments/1/2/cat.png"}  # fmt: skip
    api.message_create(DM, "", attachments=(attachment,))
    answered(
        api,
        DM,
        "echo: [attachment]\n[attachments: https://cdn.discordapp.com/attachments/1/2/cat.png]",
    )

    # Someone not in allow_from is refused before the agent (allowlist policy).
    api.message_create(DM, "let me in", author_id="100000000000000099", username="mallory")
    api.message_create(DM, "and again")
    answered(api, DM, "echo: and again")
    assert "let me in" not in user_texts(llm_server)
    assert len(replies(api, DM)) == 3


@pytest.mark.parametrize("discord_api", [600_000], indirect=True)  # heartbeats 10 min apart
def test_guild_messages_need_a_mention_or_a_reply_to_the_bot(
    fleet_factory: Any, discord_api: DiscordAPI, llm_server: LLMServer
) -> None:
    api = discord_api
    start_fleet(fleet_factory, api)
    wait_for(lambda: api.connected, timeout=30, what="the bot to identify")

    # Discord asks for a heartbeat (op 1): answered at once, not at the next interval.
    beats = len(api.heartbeats)
    api.request_heartbeat()
    wait_for(lambda: len(api.heartbeats) > beats, timeout=5, what="the requested heartbeat")
    assert api.heartbeats[-1][1] == api.seq

    api.message_create(GUILD_CHANNEL, "just chatting among humans", guild_id=GUILD)
    api.message_create(GUILD_CHANNEL, f"<@{BOT_ID}> hi from another bot", guild_id=GUILD,
                       author_id="700000000000000001", username="otherbot", bot=True,
                       mentions=(BOT_ID,))  # fmt: skip
    mention_id = api.message_create(
        GUILD_CHANNEL, f"<@{BOT_ID}> what is up", guild_id=GUILD, mentions=(BOT_ID,)
    )
    first = answered(api, GUILD_CHANNEL, "echo: what is up")
    assert first.body["message_reference"]["message_id"] == mention_id

    # A reply to the bot's own message needs no mention; nor does a nickname mention
    # written in the text only.
    bot_message = {"id": snowflake(), "channel_id": GUILD_CHANNEL, "content": "echo: what is up",
                   "author": {"id": BOT_ID, "username": BOT_NAME, "bot": True}}  # fmt: skip
    api.message_create(GUILD_CHANNEL, "and then?", guild_id=GUILD, referenced=bot_message)
    api.message_create(GUILD_CHANNEL, f"tell me <@!{BOT_ID}> more", guild_id=GUILD)
    answered(api, GUILD_CHANNEL, "echo: and then?")
    answered(api, GUILD_CHANNEL, "echo: tell me more")

    texts = user_texts(llm_server)
    assert "what is up" in texts and "and then?" in texts and "tell me more" in texts
    assert not [t for t in texts if "chatting" in t or "another bot" in t or "<@" in t], texts
    assert len(replies(api, GUILD_CHANNEL)) == 3


def test_resume_after_a_drop_a_reconnect_request_and_a_zombie_connection(
    fleet_factory: Any, discord_api: DiscordAPI
) -> None:
    api = discord_api
    fleet = start_fleet(fleet_factory, api)
    wait_for(lambda: api.connected, timeout=30, what="the bot to identify")
    session = api.session_id

    # The server drops the connection (1001); a message sent meanwhile is replayed.
    api.drop(1001)
    api.message_create(DM, "sent while away")
    wait_for(lambda: api.resumes and api.connected, timeout=15, what="a resume")
    assert api.resumes == [{"token": BOT_TOKEN, "session_id": session, "seq": 1}]
    assert api.paths[1] == "/resume?v=10&encoding=json"  # Ready's resume_gateway_url
    answered(api, DM, "echo: sent while away")

    # Reconnect (op 7): resumed with the last sequence number.
    seq = api.seq
    api.reconnect()
    wait_for(lambda: len(api.resumes) == 2 and api.connected, timeout=15, what="resume #2")
    assert api.resumes[1] == {"token": BOT_TOKEN, "session_id": session, "seq": seq}
    api.message_create(DM, "after reconnect")
    answered(api, DM, "echo: after reconnect")

    # No heartbeat ACK: a zombie connection, closed by the bot and resumed.
    api.stop_acks()
    wait_for(lambda: len(api.resumes) == 3 and api.connected, timeout=15, what="resume #3")
    assert logged(fleet, "discord gateway: no heartbeat ACK (zombie connection); resuming")
    api.message_create(DM, "after the zombie")
    answered(api, DM, "echo: after the zombie")

    # Invalid Session (d false): a new Identify, not a resume.
    api.invalidate()
    wait_for(lambda: len(api.identifies) == 2 and api.connected, timeout=20, what="identify #2")
    assert len(api.resumes) == 3 and api.session_id != session
    api.message_create(DM, "in a new session")
    answered(api, DM, "echo: in a new session")
    assert len(replies(api, DM)) == 4  # each once, the replayed one included


@pytest.mark.parametrize("discord_api", [600_000], indirect=True)  # heartbeats 10 min apart
def test_a_message_that_could_not_be_stored_is_replayed_by_a_resume(
    fleet_factory: Any, discord_api: DiscordAPI, redis_server: RedisServer
) -> None:
    api = discord_api
    fleet = start_fleet(fleet_factory, api)
    wait_for(lambda: api.connected, timeout=30, what="the bot to identify")
    session = api.session_id

    # Redis is away when the message arrives: it cannot be stored. It must not be counted
    # as handled (its sequence number acknowledged): the bot resumes from before it, and
    # Discord replays it once Redis is back.
    redis_server.stop()
    api.message_create(DM, "while redis was away")
    tried = ("discord message not accepted", "discord event not stored; resuming so that "
             "Discord replays it")  # fmt: skip
    wait_for(lambda: any(e.get("event") in tried for e in log_events(fleet)), timeout=15,
             what="the store to fail")  # fmt: skip
    redis_server.start()
    answered(api, DM, "echo: while redis was away", timeout=60)
    assert api.resumes[0] == {"token": BOT_TOKEN, "session_id": session, "seq": 1}
    assert len(api.identifies) == 1  # resumed, never a new session
    assert len(replies(api, DM)) == 1


def test_a_long_reply_is_sent_as_parts_of_at_most_2000_characters(
    fleet_factory: Any, discord_api: DiscordAPI, llm_server: LLMServer
) -> None:
    api = discord_api
    long_text = " ".join(f"word{i:04d}" for i in range(500))[:4492] + " THE END"
    assert len(long_text) == 4500
    llm_server.reply(long_text, when="write a lot")
    start_fleet(fleet_factory, api)
    wait_for(lambda: api.connected, timeout=30, what="the bot to identify")

    message_id = api.message_create(DM, "write a lot")
    wait_for(lambda: any("THE END" in p.body["content"] for p in replies(api, DM)),
             timeout=30, what="the last part")  # fmt: skip
    parts = [post.body for post in replies(api, DM)]
    assert len(parts) == 3
    assert all(len(part["content"]) <= 2000 for part in parts)
    assert " ".join(" ".join(p["content"] for p in parts).split()) == " ".join(long_text.split())
    assert parts[0]["message_reference"]["message_id"] == message_id
    assert "message_reference" not in parts[1] and "message_reference" not in parts[2]


def test_a_429_is_waited_out_for_its_retry_after_and_the_message_sent_once(
    fleet_factory: Any, discord_api: DiscordAPI
) -> None:
    api = discord_api
    start_fleet(fleet_factory, api)
    wait_for(lambda: api.connected, timeout=30, what="the bot to identify")

    api.rate_limit(1.5)
    api.message_create(DM, "slow down")
    answered(api, DM, "echo: slow down")
    tries = [a for a in api.attempts if a.body["content"] == "echo: slow down"]
    assert len(tries) == 2
    assert tries[1].at - tries[0].at >= 1.45

    api.message_create(DM, "next one")  # delivery went on, and nothing was sent twice
    answered(api, DM, "echo: next one")
    assert [p.body["content"] for p in replies(api, DM)] == ["echo: slow down", "echo: next one"]


def test_a_bad_token_is_reported_and_the_ingress_keeps_serving(
    fleet_factory: Any, discord_api: DiscordAPI
) -> None:
    api = discord_api
    api.token = "the-token-discord-knows-0123456789"  # the configured BOT_TOKEN is not it
    fleet = start_fleet(fleet_factory, api)

    event = wait_for(lambda: logged(fleet, "channel failed to start; retrying", channel="discord"),
                     timeout=20, what="the failure to be logged")  # fmt: skip
    assert "bad token" in event["error"] and "401" in event["error"]
    assert not api.identifies
    assert BOT_TOKEN not in all_output(fleet)

    # The rest of the ingress is unaffected: the other channels started, and its HTTP API
    # still gets answers.
    for other in builtin_channels():
        assert logged(fleet, "channel started", channel=other), other
    assert httpx.get(f"{fleet.base_url}/health").status_code == 200
    with fleet.client() as http:
        body = {"text": "still there?", "session": "api:check", "wait": True, "timeout": 30}
        reply = http.post("/api/message", json=body).json()
    assert reply["reply"] == "echo: still there?"

    # Once Discord accepts the token, the manager's retry brings the channel up.
    api.token = BOT_TOKEN
    wait_for(lambda: api.connected, timeout=40, what="the bot to identify on a retry")
    api.message_create(DM, "back again")
    answered(api, DM, "echo: back again")


def test_a_fatal_close_code_is_explained_and_not_retried_soon(
    fleet_factory: Any, discord_api: DiscordAPI
) -> None:
    api = discord_api
    api.identify_close = 4014  # disallowed intents
    fleet = start_fleet(fleet_factory, api, channels__discord__intents=4608)

    event = wait_for(lambda: logged(fleet, "discord gateway refused the bot", close_code=4014),
                     timeout=20, what="the refusal to be logged")  # fmt: skip
    assert "Privileged Gateway Intents" in event["error"]
    assert event["retry_in"] == 600.0
    [identify] = api.identifies
    assert identify["intents"] == 4608  # GUILD_MESSAGES | DIRECT_MESSAGES, as configured
