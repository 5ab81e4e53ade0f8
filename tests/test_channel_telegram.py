"""The Telegram channel end to end: the real ingress (python-telegram-bot inside it) against a
loopback Bot API (tests/platforms/telegram_api.py), real Redis, a real Celery worker and the
scripted LLM."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from claw_ingress.channels._telegram_markdown import to_markdown_v2
from claw_worker import constants as k
from tests.fixtures.fleet import Fleet, fleet_config
from tests.fixtures.procs import stop_process, wait_for
from tests.llm_server import last_user_text
from tests.platforms.telegram_api import BOT, TOKEN, Call, TelegramAPI, parse_markdown_v2
from tests.test_faults import RECOVERY_DEADLINE, store_without_wake_up, wait_status

USER = 4242
SECRET = "hook-secret_0123456789"


@pytest.fixture
def api() -> Iterator[TelegramAPI]:
    server = TelegramAPI().start()
    try:
        yield server
    finally:
        server.stop()


def telegram_fleet(fleet_factory: Any, api: TelegramAPI, *, worker: bool = True,
                   **overrides: Any) -> Fleet:  # fmt: skip
    settings = {"enabled": True, "token": TOKEN, "api_base": api.base_url,
                "allow_from": [str(USER)]}  # fmt: skip
    settings.update(overrides)
    fleet = fleet_factory(**{f"channels__telegram__{key}": v for key, v in settings.items()})
    if worker:
        fleet.start_worker()
    fleet.start_ingress()
    return fleet


def polling(api: TelegramAPI) -> None:
    wait_for(lambda: any(c.status in (0, 200) for c in api.calls_of("getUpdates")), timeout=30,
             what="getUpdates polls")  # fmt: skip


def replies(api: TelegramAPI, chat_id: int, count: int = 1, timeout: float = 60) -> list[Call]:
    return wait_for(lambda: len(found := api.sent(chat_id)) >= count and found, timeout=timeout,
                    what=f"{count} sendMessage to chat {chat_id}")  # fmt: skip


def ingress_log(fleet: Fleet) -> list[dict[str, Any]]:
    return fleet_log(fleet, "ingress*.log")


def fleet_log(fleet: Fleet, pattern: str = "*.log") -> list[dict[str, Any]]:
    lines = []
    for path in (fleet.home.path / "logs").glob(pattern):
        for line in path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def quiet_for(seconds: float, check: Callable[[], bool]) -> None:
    """Observe that ``check`` stays true for ``seconds`` (proving something does NOT happen
    needs a window of time; this polls through it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check()
        time.sleep(0.1)


def test_markdown_is_escaped_as_telegram_parses_it() -> None:
    plain = ["echo: hello there.", "a_b*c [x](y) ~z~ `q > #1 + 2 - 3 = {4} | 5!", "back\\slash"]
    for text in plain:
        assert parse_markdown_v2(to_markdown_v2(text)) == text
    shown = parse_markdown_v2(
        to_markdown_v2(
            "# Plan\n**bold** and `co_de` and [doc](https://x.y/a_b)\n```py\nprint('`hi`')\n```"
        )
    )
    assert shown == "Plan\nbold and co_de and doc\nprint('`hi`')\n"


def test_dm_round_trip_and_polling_survives_errors(fleet_factory, api, llm_server) -> None:
    api.fail("getUpdates", 502, "Bad Gateway")
    api.fail("getUpdates", 502, "Bad Gateway")
    fleet = telegram_fleet(fleet_factory, api)
    polling(api)
    assert api.calls_of("getMe") and api.calls_of("deleteWebhook")
    assert api.calls_of("deleteWebhook")[0].at < api.calls_of("getUpdates")[0].at
    assert len(api.calls_of("getUpdates", ok=False)) == 2  # waited out, then polled on
    sent = api.push_message(USER, "hello there")
    [reply] = replies(api, USER)
    assert reply.text == "echo: hello there"
    assert reply.params["parse_mode"] == "MarkdownV2"
    assert reply.params["reply_parameters"]["message_id"] == sent["message_id"]
    assert [last_user_text(r) for r in llm_server.requests] == ["hello there"]
    failures = [
        e for e in ingress_log(fleet) if e.get("event") == "telegram polling failed; retrying"
    ]
    assert (
        failures and failures[0]["channel"] == "telegram" and "Bad Gateway" in failures[0]["error"]
    )
    # A user quoting an earlier message is answered too (metadata: see the media test).
    api.push_message(USER, "what did you mean?", reply_to=sent)
    replies(api, USER, 2)
    # The model sees what the user quoted (claw_worker/agent/context.py user_message).
    assert (
        last_user_text(llm_server.requests[-1]) == "[in reply to: hello there]\nwhat did you mean?"
    )
    # Stopping ends the long poll at once (it does not wait the poll's 30 s out).
    ingress = next(p for p in fleet.procs if "claw_ingress" in p.args)
    began = time.monotonic()
    stop_process(ingress)
    assert time.monotonic() - began < 10  # (uvicorn re-raises the SIGTERM: exit -15)
    stopped = [e for e in ingress_log(fleet) if e.get("event") == "channel stopped"]
    assert any(e["channel"] == "telegram" for e in stopped)


def test_unknown_sender_gets_a_pairing_code_and_never_reaches_the_llm(
    fleet_factory, api, llm_server, claw_home
) -> None:
    fleet = telegram_fleet(fleet_factory, api, allow_from=[])
    polling(api)
    api.push_message(777, "let me in", user_id=777, first_name="Eve")
    [reply] = replies(api, 777)
    code = re.search(r"pairing code: ([A-Z0-9]{8})", reply.text)
    assert code, reply.text
    api.push_message(777, "let me in now", user_id=777, first_name="Eve")
    wait_for(lambda: len([e for e in ingress_log(fleet) if e.get("event") == "sender refused"
                          and e.get("sender_id") == "777"]) == 2, what="the second refusal")  # fmt: skip
    # Still one message only (a code is sent once) and nothing for the model.
    assert len(api.sent(777)) == 1
    assert llm_server.requests == []
    approved = claw_home.clawctl("pairing", "approve", code.group(1))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    api.push_message(777, "thanks", user_id=777, first_name="Eve")
    assert replies(api, 777, 2)[-1].text == "echo: thanks"


def test_a_stranger_in_a_group_is_given_no_pairing_code_there(
    fleet_factory, api, llm_server, claw_home
) -> None:
    """An unknown sender who mentioned the bot in a group had a pairing code posted in the
    group, for everyone there to read, and anyone in it could ask for one: codes are now
    given in private chats only."""
    group = -1001234567890
    fleet = telegram_fleet(fleet_factory, api, allow_from=[])
    polling(api)
    api.push_message(group, "@claw_test_bot let me in", chat_type="supergroup", user_id=888)
    wait_for(lambda: any(e.get("event") == "sender refused" and e.get("sender_id") == "888"
                         for e in ingress_log(fleet)), what="the refusal")  # fmt: skip
    api.push_message(888, "let me in", user_id=888, first_name="Mallory")
    [reply] = replies(api, 888)
    assert re.search(r"pairing code: [A-Z0-9]{8}", reply.text), reply.text
    assert api.sent(group) == [] and llm_server.requests == []
    pending = claw_home.clawctl("pairing", "list").stdout
    assert pending.count("888") == 1, pending


def test_group_messages_need_a_mention_or_a_reply_to_the_bot(
    fleet_factory, api, llm_server
) -> None:
    group = -1001234567890
    telegram_fleet(fleet_factory, api, allow_from=[], dm_policy="open")
    polling(api)
    api.push_message(group, "hello everyone", chat_type="supergroup")
    api.push_message(group, "@claw_test_bot what is up?", chat_type="supergroup")
    [first] = replies(api, group)
    assert first.text == "echo: what is up?"  # the mention is cut from the text
    bot_message = {"message_id": first.result["message_id"], "from": BOT, "date": 0,
                   "chat": {"id": group, "type": "supergroup"}, "text": first.text}  # fmt: skip
    other = api.push_message(group, "unrelated chatter", chat_type="supergroup", user_id=99)
    api.push_message(group, "reply to a person", chat_type="supergroup", reply_to=other)
    api.push_message(group, "and then?", chat_type="supergroup", reply_to=bot_message)
    second = replies(api, group, 2)[1]
    assert second.text == "echo: [in reply to: echo: what is up?]\nand then?"
    # A command addressed to the bot is answered by the ingress, not the model.
    api.push_message(group, "/help@claw_test_bot", chat_type="supergroup")
    assert "/stop" in replies(api, group, 3)[2].text
    # One addressed to another bot is that bot's, even as a reply to ours.
    api.push_message(group, "/help@other_bot", chat_type="supergroup", reply_to=bot_message)
    api.push_message(group, "@claw_test_bot last", chat_type="supergroup")
    assert [r.text for r in replies(api, group, 4)[3:]] == ["echo: last"]
    seen = [last_user_text(r) for r in llm_server.requests]
    assert seen == ["what is up?", "[in reply to: echo: what is up?]\nand then?", "last"], seen


def test_photo_and_document_arrive_as_media_references(
    fleet_factory, api, llm_server, redis_server
) -> None:
    fleet = telegram_fleet(fleet_factory, api, worker=False)
    polling(api)
    photo = api.push_message(USER, photo="PHOTO-FILE-ID", caption="what is in this picture?")
    api.push_message(USER, document=("DOC-FILE-ID", "report.pdf"))
    api.push_message(USER, "and this one?", reply_to=photo)
    mailbox = k.mailbox_key(f"telegram:{USER}")
    client = redis_server.client()
    stored = wait_for(lambda: len(m := client.lrange(mailbox, 0, -1)) == 3 and m, timeout=30,
                      what="three messages in the mailbox")  # fmt: skip
    first, second, third = (json.loads(item) for item in stored)
    assert first["media"] == ["telegram:photo:PHOTO-FILE-ID"]  # the largest size
    assert first["text"] == "what is in this picture?"
    assert first["sender_id"] == str(USER) and first["chat_id"] == str(USER)
    assert first["metadata"]["platform_message_id"] == photo["message_id"]
    assert second["media"] == ["telegram:document:DOC-FILE-ID"]
    assert second["metadata"]["file_name"] == "report.pdf"
    assert second["text"] == "[document: report.pdf]"  # no caption: the model is told what came
    # A message quoting another: its id, text and sender travel along.
    assert third["reply_to"] == str(photo["message_id"])
    assert third["metadata"]["reply_to_text"] == "what is in this picture?"
    assert third["metadata"]["reply_to_sender_id"] == str(USER)
    fleet.start_worker()
    replies(api, USER, 3)
    # The model is shown the text, what came attached and what was quoted
    # (claw_worker/agent/context.py user_message).
    assert [last_user_text(r) for r in llm_server.requests] == [
        "what is in this picture?\n[attachments: telegram:photo:PHOTO-FILE-ID]",
        "[document: report.pdf]\n[attachments: telegram:document:DOC-FILE-ID]",
        "[in reply to: what is in this picture?]\nand this one?",
    ]


@pytest.mark.parametrize(
    "words",
    [
        [f"w{n:05d}" for n in range(1667)],  # 6 characters each with the space: 10,002
        # Telegram's 4096 counts UTF-16 code units, two for an emoji outside the BMP: split
        # by code points, a part of ~7,000 units was refused as too long (plain too) and the
        # whole reply lost. 4,799 code points, 8,399 units: three parts.
        ["\U0001f980\U0001f980\U0001f980"] * 1200,
    ],
    ids=["ascii", "emoji"],
)
def test_a_long_reply_is_sent_as_parts_in_order(
    fleet_factory, api, llm_server, words: list[str]
) -> None:
    long_text = " ".join(words)
    assert len(long_text.encode("utf-16-le")) // 2 >= 8_200
    llm_server.reply(long_text)
    telegram_fleet(fleet_factory, api)
    polling(api)
    api.push_message(USER, "write a lot")
    parts = replies(api, USER, 3)
    quiet_for(1.0, lambda: len(api.sent(USER)) == 3)
    assert not api.calls_of("sendMessage", ok=False)
    assert all(len(p.text.encode("utf-16-le")) // 2 <= 4096 for p in parts)
    assert " ".join(p.text.strip() for p in parts).split() == words


def test_send_waits_out_429_falls_back_to_plain_text_and_gives_up_when_blocked(
    fleet_factory, api, llm_server
) -> None:
    telegram_fleet(fleet_factory, api)
    polling(api)
    api.fail("sendMessage", 429, "Too Many Requests: retry after 2", retry_after=2)
    api.push_message(USER, "first")
    [reply] = replies(api, USER)
    [refused] = api.calls_of("sendMessage", ok=False)
    assert refused.status == 429 and reply.text == "echo: first"
    assert reply.at - refused.at >= 1.9
    # Telegram cannot parse the formatted text: the same reply goes again, plain.
    api.fail("sendMessage", 400, "Bad Request: can't parse entities: Character '.' is reserved")
    api.push_message(USER, "second.")
    plain = replies(api, USER, 2)[1]
    assert plain.text == "echo: second." and "parse_mode" not in plain.params
    # Blocked by the user: refused for good, not retried; the next reply still goes out.
    api.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
    api.push_message(USER, "third")
    api.push_message(USER, "fourth")
    assert replies(api, USER, 3)[2].text == "echo: fourth"
    refusals = [c.status for c in api.calls_of("sendMessage", ok=False)]
    assert refusals == [429, 400, 403]
    assert [c.text for c in api.sent(USER)] == ["echo: first", "echo: second.", "echo: fourth"]


def test_typing_is_shown_while_the_model_works_and_stops_after_the_reply(
    fleet_factory, api, llm_server
) -> None:
    llm_server.reply("done thinking", delay=5)
    telegram_fleet(fleet_factory, api)
    polling(api)
    api.push_message(USER, "think hard")
    [reply] = replies(api, USER)
    typing = [c for c in api.calls_of("sendChatAction") if int(c.params["chat_id"]) == USER]
    assert typing and all(c.params["action"] == "typing" for c in typing)
    assert all(c.at < reply.at for c in typing)
    assert len(typing) >= 2  # every ~4 s through a 5 s answer
    quiet_for(5.0, lambda: all(c.at < reply.at for c in api.calls_of("sendChatAction")))


def test_webhook_mode_checks_the_secret_token(
    fleet_factory, api, llm_server, claw_home, redis_server
) -> None:
    fleet = fleet_factory()
    url = f"{fleet.base_url}/webhooks/telegram/"  # configured without the "/": still reached
    channel = {"enabled": True, "token": TOKEN, "api_base": api.base_url, "mode": "webhook",
               "webhook_url": url.rstrip("/"), "webhook_secret": SECRET,
               "allow_from": [str(USER)]}  # fmt: skip
    claw_home.write_config(fleet_config(redis_server.url, llm_server.base_url, fleet.port,
                                       channels__telegram=channel))  # fmt: skip
    fleet.start_worker()
    fleet.start_ingress()
    [hook] = wait_for(lambda: api.calls_of("setWebhook"), timeout=30, what="setWebhook")
    assert hook.params["url"] == url and hook.params["secret_token"] == SECRET
    # Updates come through the webhook (Telegram sends the secret in the header).
    sent = api.push_message(USER, "via webhook")
    assert replies(api, USER)[0].text == "echo: via webhook"
    assert api.webhook_answers[-1] == 200  # (a 503 first if it came before start-up ended)
    assert not api.calls_of("getUpdates")
    # Telegram delivering the same message again (it retries) stores it once.
    again = httpx.post(url, json={"update_id": 9, "message": sent},
                       headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})  # fmt: skip
    assert again.status_code == 200
    # Forged: a wrong secret, or none, is a 401 and reaches nobody.
    update = {"update_id": 1, "message": {
        "message_id": 1, "date": 0, "text": "forged", "chat": {"id": USER, "type": "private"},
        "from": {"id": USER, "is_bot": False, "first_name": "Ada"}}}  # fmt: skip
    for headers in ({"X-Telegram-Bot-Api-Secret-Token": "wrong"}, {}):
        answer = httpx.post(url, json=update, headers=headers)
        assert answer.status_code == 401, answer.text
    quiet_for(2.0, lambda: len(api.sent(USER)) == 1)
    assert [last_user_text(r) for r in llm_server.requests] == ["via webhook"]


def test_a_refused_token_is_logged_and_retried_while_the_gateway_serves(
    fleet_factory, api, llm_server, claw_home
) -> None:
    bad = "7000000001:AAH-this-is-not-the-right-token-99999"
    fleet = telegram_fleet(fleet_factory, api, token=bad)
    wait_for(lambda: len(api.calls_of("getMe")) >= 2, timeout=30, what="getMe retried")
    assert all(c.status == 401 for c in api.calls_of("getMe"))
    assert not api.calls_of("getUpdates")
    with fleet.client() as http:
        assert http.get("/health").json() == {"status": "ok"}
        answer = http.post("/api/message", json={"text": "still here", "wait": True})
        assert answer.json()["reply"] == "echo: still here"
    failed = [
        e for e in ingress_log(fleet) if e.get("event") == "channel failed to start; retrying"
    ]
    assert failed and failed[0]["channel"] == "telegram"
    assert "refused the bot token" in failed[0]["error"] and "Unauthorized" in failed[0]["error"]
    logs = "".join(p.read_text() for p in (fleet.home.path / "logs").glob("*.log"))
    assert bad not in logs and bad.split(":")[1] not in logs
    # The right token, set while it runs: the next try connects and polls.
    fixed = claw_home.clawctl("config", "set", "channels.telegram.token", TOKEN)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    polling(api)
    api.push_message(USER, "hello again")
    assert replies(api, USER)[0].text == "echo: hello again"


def test_clawctl_channel_test_sends_through_the_adapter(fleet_factory, api, claw_home) -> None:
    fleet_factory(channels__telegram__enabled=True, channels__telegram__token=TOKEN,
                  channels__telegram__api_base=api.base_url)  # fmt: skip
    result = claw_home.clawctl("channel", "test", "--channel", "telegram", "--to", str(USER),
                               "-m", "ping *there* (1.5)")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [sent] = api.sent(USER)
    assert sent.text == "ping there (1.5)" and sent.params["parse_mode"] == "MarkdownV2"
    api.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
    result = claw_home.clawctl("channel", "test", "--channel", "telegram", "--to", str(USER),
                               "-m", "again")  # fmt: skip
    assert result.returncode != 0 and "blocked" in result.stderr


def test_an_ingress_whose_port_is_taken_exits_and_stops_polling(fleet_factory, api) -> None:
    """It used to shut down for ever: a delivery task whose cancel redis-py swallowed kept
    the process alive, and its Telegram poller went on taking the chat's updates."""
    fleet = fleet_factory(**{f"channels__telegram__{key}": value for key, value in
                             {"enabled": True, "token": TOKEN, "api_base": api.base_url,
                              "allow_from": [str(USER)]}.items()})  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", fleet.port))
        taken.listen()
        proc = subprocess.Popen([sys.executable, "-m", "claw_ingress"], env=fleet.home.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
    assert proc.returncode != 0
    assert "address already in use" in out and "Application shutdown complete" in out
    polls = len(api.calls_of("getUpdates"))
    quiet_for(1.5, lambda: len(api.calls_of("getUpdates")) == polls)


def test_a_reply_goes_out_at_once_after_redis_dropped_the_ingress_connections(
    fleet_factory, api, llm_server, redis_server
) -> None:
    """Redis closing its clients' connections (a restart, a failover, a proxy's or
    ``timeout``'s idle limit) left the ingress's pooled ones dead: the next command on one
    failed ("Connection closed by server", redis-py's asyncio client built from a URL does
    not retry), so the reply's delivery failed and waited for the 60 s reclaim (75 s seen).
    Now a dead pooled connection is replaced and the command sent again, and a delivery
    that still meets a Redis error is tried again within seconds."""
    fleet = telegram_fleet(fleet_factory, api)
    polling(api)
    api.push_message(USER, "before")
    replies(api, USER, 1)
    r = redis_server.client()
    for text in ("after the first drop", "after the second drop"):
        r.client_kill_filter(_type="normal", skipme=True)  # every connection but this one
        count = len(api.sent(USER)) + 1
        api.push_message(USER, text)
        # Well inside the reclaim's 60-75 s; on a miss, say what the fleet logged.
        try:
            replies(api, USER, count, timeout=45)
        except AssertionError:
            logged = [f"{e.get('timestamp')} {e.get('event')} {e.get('error', '')}"
                      for e in fleet_log(fleet) if e.get("level") in ("warning", "error")]  # fmt: skip
            raise AssertionError("\n".join(sorted(logged)[-40:])) from None
        assert api.sent(USER)[-1].text == f"echo: {text}"


def test_a_redis_that_lost_its_data_is_taken_up_again(
    fleet_factory, api, llm_server, redis_server
) -> None:
    """Redis back empty (a restart without persistence, as a default install runs it; a
    failover to an empty replica). Before: the ingress's delivery failed on NOGROUP for
    good, so no reply went out on any channel until the ingress restarted; and beat's
    static entries were gone, so no sweeper, heartbeat or Sentinel until beat restarted.
    Now the consumer group is made again and beat writes its entries again."""
    fleet = telegram_fleet(fleet_factory, api)
    fleet.start_beat()
    polling(api)
    api.push_message(USER, "before")
    replies(api, USER, 1)
    r = redis_server.client()
    r.flushall()
    r.client_kill_filter(_type="normal", skipme=True)  # as a restart: empty, and reconnected
    api.push_message(USER, "after the loss")
    assert replies(api, USER, 2, timeout=30)[-1].text == "echo: after the loss"
    # The sweeper runs again: it finds a message whose wake-up was lost.
    orphan = store_without_wake_up(redis_server.url, "api:after-loss", "found by the sweeper")
    wait_status(r, "api:after-loss", orphan.message_id, "done", timeout=RECOVERY_DEADLINE)


def _update_with(**fields: Any) -> dict[str, Any]:
    """A message update from USER with ``fields`` put over its own (wrong types, say)."""
    message = {"message_id": 900 + len(fields), "date": int(time.time()),
               "chat": {"id": USER, "type": "private"},
               "from": {"id": USER, "is_bot": False, "first_name": "Ada"}, "text": "x"}  # fmt: skip
    message.update(fields)
    return {"message": message}


# Updates the Bot API should never send but a proxy, a newer API or a bug can: one that
# python-telegram-bot cannot read (it read the whole getUpdates batch or none), and ones
# it reads but with a number where text belongs, or no chat.
POISON = [_update_with(date="yesterday"), _update_with(photo=[{"file_id": 5}]),
          _update_with(text=12345), _update_with(chat=None)]  # fmt: skip


def test_updates_that_cannot_be_read_are_skipped_and_polling_goes_on(
    fleet_factory, api, llm_server
) -> None:
    fleet = telegram_fleet(fleet_factory, api)
    polling(api)
    for update in POISON:
        api.push_update(update)
    api.push_message(USER, "after the bad ones")
    # Before: the first kind failed every getUpdates at the same offset (polling wedged for
    # every chat); the others ended the poll task, silently.
    [reply] = replies(api, USER, timeout=30)
    assert reply.text == "echo: after the bad ones"
    skipped = [e for e in ingress_log(fleet) if e.get("event") == "telegram update skipped"]
    assert len(skipped) == len(POISON), skipped
    api.push_message(USER, "and still polling")
    assert replies(api, USER, 2)[1].text == "echo: and still polling"


def test_a_webhook_update_that_cannot_be_read_is_answered_200_not_repeated(
    fleet_factory, api, llm_server, claw_home, redis_server
) -> None:
    fleet = fleet_factory()
    url = f"{fleet.base_url}/webhooks/telegram/"
    channel = {"enabled": True, "token": TOKEN, "api_base": api.base_url, "mode": "webhook",
               "webhook_url": url, "webhook_secret": SECRET, "allow_from": [str(USER)]}  # fmt: skip
    claw_home.write_config(fleet_config(redis_server.url, llm_server.base_url, fleet.port,
                                       channels__telegram=channel))  # fmt: skip
    fleet.start_worker()
    fleet.start_ingress()
    wait_for(lambda: api.calls_of("setWebhook"), timeout=30, what="setWebhook")
    api.push_message(USER, "warm up")
    replies(api, USER)
    # Telegram repeats an update answered with anything but a 2xx (and holds the ones after
    # it): one it sent that cannot be read is logged and taken, never a 4xx or a 500.
    for update in [*POISON, _update_with(date=None), [1, 2]]:
        body = {"update_id": 77, **update} if isinstance(update, dict) else update
        answer = httpx.post(url, json=body,
                            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})  # fmt: skip
        assert answer.status_code == 200, (update, answer.status_code, answer.text)
    api.push_message(USER, "after the bad ones")
    assert replies(api, USER, 2)[1].text == "echo: after the bad ones"


def test_flood_control_in_one_chat_does_not_hold_back_the_others(
    fleet_factory, api, llm_server
) -> None:
    """Telegram's flood control is per chat (a busy group: 20 messages a minute). Replies
    went out through one queue per channel, so a chat told to wait held every other chat's
    replies for as long (up to 5 minutes a try)."""
    other = 4343
    telegram_fleet(fleet_factory, api, allow_from=[str(USER), str(other)])
    polling(api)
    api.fail("sendMessage", 429, "Too Many Requests: retry after 8", retry_after=8, chat_id=USER)
    api.push_message(USER, "busy chat")
    [refused] = wait_for(lambda: api.calls_of("sendMessage", ok=False), timeout=60,
                         what="the 429")  # fmt: skip
    api.push_message(other, "quiet chat", user_id=other, first_name="Bo")
    [quiet] = replies(api, other, timeout=60)
    assert quiet.text == "echo: quiet chat"
    assert quiet.at - refused.at < 6, "the other chat waited out the busy chat's 429"
    [busy] = replies(api, USER, timeout=60)
    assert busy.text == "echo: busy chat" and busy.at - refused.at >= 7.9
