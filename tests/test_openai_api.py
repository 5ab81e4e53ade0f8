"""The OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``) end to end: the
official ``openai`` SDK against the real ingress, real Celery workers, a real redis-server
and the scripted LLM."""

from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from claw_ingress.openai_api import KEEPALIVE_SEC
from tests.fixtures.procs import wait_for

TOKEN = "oa-token-abcdefghijkl"


def start_fleet(fleet_factory: Any, **overrides: Any) -> Any:
    fleet = fleet_factory(**overrides)
    fleet.start_worker()
    fleet.start_ingress()
    return fleet


def sdk(fleet: Any, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.base_url}/v1", api_key=api_key, max_retries=0,
                         timeout=60)  # fmt: skip


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_completion_stream_and_models_with_the_sdk(fleet_factory) -> None:
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    done = client.chat.completions.create(model="gpt-4o", messages=[user("hello sdk")], user="s1")
    assert done.choices[0].message.content == "echo: hello sdk"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "stop"
    assert done.object == "chat.completion" and done.model == "gpt-4o"
    assert done.id.startswith("chatcmpl-") and done.usage is not None
    # The run's tokens, as the scripted LLM counted them: the parts add up to the total.
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0, done.usage
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model="clawfleet", messages=[user("stream me")], user="s1", stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "echo: stream me"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    assert {c.id for c in chunks} == {chunks[0].id}

    # Text parts of a list content are joined; an image is an attachment's reference.
    parts = [{"type": "text", "text": "part one"},
             {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]  # fmt: skip
    done = client.chat.completions.create(model="m", messages=[user(parts)])
    assert done.choices[0].message.content == (
        "echo: part one\n[attachments: image:https://example.com/a.png]"
    )

    # A slash command is answered the same way, streamed or not.
    done = client.chat.completions.create(model="m", messages=[user("/help")], user="s1")
    assert "/status" in (done.choices[0].message.content or "")
    chunks = list(client.chat.completions.create(model="m", messages=[user("/help")], stream=True))
    assert "/status" in "".join(c.choices[0].delta.content or "" for c in chunks)

    ids = [m.id for m in client.models.list()]
    assert ids[0] == "clawfleet" and "test-model" in ids

    # The wire: server-sent events, the role first, [DONE] last.
    body = {"model": "m", "messages": [user("raw")], "stream": True}
    with httpx.stream("POST", f"{fleet.base_url}/v1/chat/completions", json=body,
                      timeout=60) as resp:  # fmt: skip
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert '"role": "assistant"' in events[0] and events[-1] == "data: [DONE]"


def test_same_user_shares_the_session_history(fleet_factory, llm_server) -> None:
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    client.chat.completions.create(model="m", messages=[user("first question")], user="hist")
    # Earlier messages of the request are not replayed: the session holds the history.
    client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "client prompt"}, user("bogus earlier"),
                  {"role": "assistant", "content": "bogus answer"}, user("second question")],
        user="hist",
    )  # fmt: skip
    sent = llm_server.requests[-1]["messages"]
    contents = [str(m.get("content")) for m in sent]
    assert any("first question" in c for c in contents)
    assert any("echo: first question" in c for c in contents)
    assert not any("bogus" in c or "client prompt" in c for c in contents)
    # Another user is another session.
    client.chat.completions.create(model="m", messages=[user("someone else")], user="other")
    assert not any(
        "first question" in str(m.get("content")) for m in llm_server.requests[-1]["messages"]
    )


def test_x_claw_session_names_the_session(fleet_factory) -> None:
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    done = client.chat.completions.create(
        model="m", messages=[user("named")], extra_headers={"X-Claw-Session": "openai:desk-42"}
    )
    message_id = done.id.removeprefix("chatcmpl-")
    record = httpx.get(f"{fleet.base_url}/api/messages/{message_id}").json()
    assert record["session_key"] == "openai:desk-42" and record["reply"] == "echo: named"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="m", messages=[user("x")], extra_headers={"X-Claw-Session": "has space"}
        )
    assert bad.value.param == "X-Claw-Session"  # type: ignore[attr-defined]


def test_token_is_the_api_key(fleet_factory) -> None:
    fleet = start_fleet(fleet_factory, gateway__token=TOKEN)
    done = sdk(fleet, TOKEN).chat.completions.create(model="m", messages=[user("with key")])
    assert done.choices[0].message.content == "echo: with key"
    assert "clawfleet" in [m.id for m in sdk(fleet, TOKEN).models.list()]
    with pytest.raises(openai.AuthenticationError):
        sdk(fleet, "wrong").chat.completions.create(model="m", messages=[user("no")])
    with pytest.raises(openai.AuthenticationError):
        sdk(fleet, "wrong").models.list()


def test_bad_requests_get_openai_errors(fleet_factory) -> None:
    fleet = start_fleet(fleet_factory)
    url = f"{fleet.base_url}/v1/chat/completions"
    for body, param, said in [
        ({"model": "m", "messages": []}, "messages",
         "messages: must hold at least one message"),
        ({"model": "m", "messages": "hi"}, "messages", "messages: Input should be a valid list"),
        ({"model": "m", "messages": [{"content": "no role"}]}, "messages.0.role",
         "messages.0.role: Field required"),
        ({"model": "m", "messages": [{"role": "system", "content": "only"}]}, "messages",
         "messages needs a message with role 'user'"),
        ({"model": "m", "messages": [user("  ")]}, "messages", "the last user message has no text"),
        ({"model": "m", "messages": [user("x")], "stream": "yes"}, "stream",
         "stream: Input should be a valid boolean"),
        ({"model": "m", "messages": [user("x")], "n": 2}, "n",
         "n: the agent gives one answer per request, not 2; leave n out or set it to 1"),
    ]:  # fmt: skip
        resp = httpx.post(url, json=body)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
        assert error["message"] == said, error
        assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError, match="not 2"):
        sdk(fleet).chat.completions.create(model="m", messages=[user("two")], n=2)
    resp = httpx.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]["message"]
    resp = httpx.post(url, json={"messages": [user("x" * 600_000)]})
    assert resp.status_code == 400, resp.text
    assert "longer than 200000 characters" in resp.json()["error"]["message"]
    # Unknown fields (OpenAI clients send many) are accepted.
    resp = httpx.post(url, json={"model": "m", "messages": [user("extras")], "temperature": 0.2,
                                 "tools": [], "seed": 1, "n": 1}, timeout=60)  # fmt: skip
    assert resp.json()["choices"][0]["message"]["content"] == "echo: extras"


def test_timeout_is_an_openai_error_and_not_retried(fleet_factory, llm_server) -> None:
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    llm_server.reply("late answer", when="slow one", delay=3)
    resp = httpx.post(
        f"{fleet.base_url}/v1/chat/completions",
        json={"model": "m", "messages": [user("slow one")]},
        headers={"X-Claw-Timeout": "0.5"},
        timeout=30,
    )
    assert resp.status_code == 504 and resp.headers["x-should-retry"] == "false"
    error = resp.json()["error"]
    assert error["type"] == "timeout" and "/api/messages/" in error["message"]
    llm_server.reply("late again", when="slow stream", delay=3)
    stream = client.chat.completions.create(
        model="m", messages=[user("slow stream")], stream=True,
        extra_headers={"X-Claw-Timeout": "0.5"},
    )  # fmt: skip
    with pytest.raises(openai.APIError) as failed:
        for _chunk in stream:
            pass
    assert "no reply within" in str(failed.value)


def test_stream_sends_keepalives_while_the_agent_works(fleet_factory, llm_server) -> None:
    fleet = start_fleet(fleet_factory)
    llm_server.reply("slowly", when="take your time", delay=KEEPALIVE_SEC + 1)
    body = {"model": "m", "messages": [user("take your time")], "stream": True}
    with httpx.stream("POST", f"{fleet.base_url}/v1/chat/completions", json=body,
                      timeout=60) as resp:  # fmt: skip
        lines = [line for line in resp.iter_lines() if line]
    assert ": keep-alive" in lines
    assert '"content": "slowly"' in lines[-3] and lines[-1] == "data: [DONE]"


def test_a_reply_the_stream_reader_missed_is_found_in_the_record(
    fleet_factory: Any, redis_server: Any
) -> None:
    """No worker: the test finishes the message in Redis itself, writing the record but
    nothing on the outbound stream (as when the ingress's reader reconnected past the
    reply). The waiting request finds it by polling the record, both routes."""
    from claw_worker import constants as k

    fleet = fleet_factory()
    fleet.start_ingress()
    r = redis_server.client()

    def finish_when_queued(session: str, reply: str) -> None:
        def queued() -> str | None:
            ids = [key.rsplit(":", 1)[-1] for key in r.scan_iter(k.message_key(session, "*"))]
            return ids[0] if ids else None

        message_id = wait_for(queued, timeout=20, what=f"a message queued in {session}")
        r.hset(k.message_key(session, message_id), mapping={"status": "done", "reply": reply})

    with ThreadPoolExecutor(2) as pool:
        chat = pool.submit(lambda: httpx.post(
            f"{fleet.base_url}/v1/chat/completions", timeout=30,
            headers={"X-Claw-Session": "openai:missed", "X-Claw-Timeout": "20"},
            json={"model": "m", "messages": [user("anyone there?")]},
        ))  # fmt: skip
        finish_when_queued("openai:missed", "found in the record")
        answer = chat.result()
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "found in the record"

        api = pool.submit(lambda: httpx.post(
            f"{fleet.base_url}/api/message", timeout=30,
            json={"text": "and here?", "session": "api:missed", "wait": True, "timeout": 20},
        ))  # fmt: skip
        finish_when_queued("api:missed", "also in the record")
        answer = api.result()
        assert answer.status_code == 200, answer.text
        assert answer.json()["reply"] == "also in the record"


def test_refusals_before_the_route_are_openai_errors_too(fleet_factory) -> None:
    """The guards, the rate limit and the router answer a /v1 request before the route
    runs: with OpenAI's error object too, which the SDK reads into ``type`` and ``code`` (a
    client that validates the shape loses the reason to a string). /api keeps its own."""
    fleet = start_fleet(fleet_factory, gateway__rate_limit={
        "per_ip_per_min": 1, "per_ip_burst": 10, "per_sender_per_min": 0})  # fmt: skip
    url = f"{fleet.base_url}/v1/chat/completions"
    body = {"model": "m", "messages": [user("x")]}
    refusals = {
        415: httpx.post(url, content=json.dumps(body), headers={"content-type": "text/plain"}),
        403: httpx.post(url, json=body, headers={"origin": "https://evil.example"}),
        404: httpx.post(f"{fleet.base_url}/v1/embeddings", json=body),
        405: httpx.get(url),
        413: httpx.post(f"{fleet.base_url}/v1/embeddings", json={**body, "pad": "x" * 600_000}),
    }
    for status, resp in refusals.items():
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, resp.text
        assert error["type"] == "invalid_request_error" and error["message"], resp.text
    assert "Content-Type must be application/json" in refusals[415].json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(fleet).embeddings.create(model="m", input="x")
    assert missing.value.type == "invalid_request_error", missing.value.body  # type: ignore[attr-defined]
    assert "POST /v1/embeddings" in missing.value.message
    own = httpx.post(f"{fleet.base_url}/api/message", content="{}",
                     headers={"content-type": "text/plain"})  # fmt: skip
    assert own.status_code == 415 and isinstance(own.json()["error"], str)

    def limited() -> openai.RateLimitError | None:
        try:
            sdk(fleet).models.list()
        except openai.RateLimitError as exc:
            return exc
        return None

    over = wait_for(limited, timeout=20, what="the address's rate limit")
    assert over.code == "rate_limit_exceeded" and over.type == "rate_limit_error", over.body  # type: ignore[attr-defined]
    assert "gateway.rate_limit" in over.message and over.response.headers["retry-after"]


def test_a_listed_model_can_be_retrieved(fleet_factory) -> None:
    """``models.retrieve`` (clients call it to check the name they were configured with):
    each listed model, ids with a slash included; another is OpenAI's model_not_found."""
    fleet = start_fleet(fleet_factory, providers__proxy__models=["test-model", "vendor/model-x"],
                        gateway__token=TOKEN)  # fmt: skip
    client = sdk(fleet, TOKEN)
    for name in [m.id for m in client.models.list()]:
        model = client.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "clawfleet")
    assert {"clawfleet", "test-model", "vendor/model-x"} <= {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-nope")
    assert missing.value.code == "model_not_found" and "gpt-nope" in missing.value.message  # type: ignore[attr-defined]
    with pytest.raises(openai.AuthenticationError):
        sdk(fleet, "wrong").models.retrieve("clawfleet")


def test_a_long_conversation_with_a_pasted_image_is_taken(fleet_factory) -> None:
    """OpenAI clients resend the whole conversation each turn, an image pasted into it as a
    data URL: one screenshot was over gateway.max_body_bytes (512 KiB), and that turn and
    every later one of the conversation got 413. The chat route takes up to
    gateway.max_openai_body_bytes (16 MiB; the agent reads the last user message); the
    other routes keep max_body_bytes."""
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    screenshot = "data:image/png;base64," + base64.b64encode(os.urandom(1_200_000)).decode()
    pasted = [{"type": "text", "text": "what is on it?"},
              {"type": "image_url", "image_url": {"url": screenshot}}]  # fmt: skip
    history = [user(pasted), {"role": "assistant", "content": "a login form"}]
    done = client.chat.completions.create(model="m", messages=[*history, user("and now?")])
    assert done.choices[0].message.content == "echo: and now?"
    chunks = client.chat.completions.create(model="m", messages=[*history, user("streamed")],
                                            stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: streamed"
    with pytest.raises(openai.APIStatusError) as over:
        client.chat.completions.create(model="m", messages=[user("x"), {"role": "assistant",
                                       "content": "y" * (17 << 20)}, user("z")])  # fmt: skip
    assert over.value.status_code == 413
    assert "gateway.max_openai_body_bytes" in over.value.message
    resp = httpx.post(f"{fleet.base_url}/api/message", json={"text": "x" * 600_000})
    assert resp.status_code == 413 and "gateway.max_body_bytes" in resp.json()["error"]


def test_null_where_openais_schema_allows_it(fleet_factory) -> None:
    """OpenAI's schema makes stream, n and stream_options nullable (null: the default), and
    clients that build the body from optional fields send null: taken, as OpenAI does."""
    fleet = start_fleet(fleet_factory)
    url = f"{fleet.base_url}/v1/chat/completions"
    nulls = {"stream": None, "n": None, "stream_options": None, "user": None}
    resp = httpx.post(url, json={"model": "m", "messages": [user("nulls")], **nulls}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "echo: nulls"
    body = {"model": "m", "messages": [user("null options")], **nulls, "stream": True}
    with httpx.stream("POST", url, json=body, timeout=60) as streamed:
        lines = [line for line in streamed.iter_lines() if line]
    assert streamed.status_code == 200 and lines[-1] == "data: [DONE]", lines
    assert '"content": "echo: null options"' in "".join(lines)


def test_attachments_are_referenced_and_may_come_alone(fleet_factory, llm_server) -> None:
    """An image, audio or file part is an attachment, as on a chat channel: referenced in the
    user's turn (an http(s) URL as is; inline data by its type and size, not kept). A
    message of attachments alone is taken (it was refused "no text"), with a placeholder."""
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + bytes(1196)).decode()
    done = client.chat.completions.create(
        model="m", messages=[user([{"type": "image_url", "image_url": {"url": png}}])]
    )
    assert done.choices[0].message.content == (
        "echo: [image]\n[attachments: image: inline image/png, 1,200 bytes (not kept)]"
    )
    sent = str(llm_server.requests[-1]["messages"][-1]["content"])
    assert "base64" not in sent and "iVBOR" not in sent  # the data itself is not the prompt
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA" * 100, "format": "wav"}}
    pdf = {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:..."}}
    done = client.chat.completions.create(model="m", messages=[user([audio, pdf])])
    assert done.choices[0].message.content == (
        "echo: [voice message]\n[attachments: audio: inline audio/wav, 300 bytes (not kept),"
        " file:report.pdf]"
    )
    # Parts of an unknown type or an odd shape are skipped: with no text, the usual 400.
    resp = httpx.post(f"{fleet.base_url}/v1/chat/completions", json={"model": "m", "messages": [
        user([{"type": "image_url", "image_url": 7}, {"type": "refusal", "refusal": "x"}])]})  # fmt: skip
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"] == "the last user message has no text"


def test_a_request_not_ending_with_the_user_is_refused(fleet_factory, llm_server) -> None:
    """A request ending with the assistant's or a tool's message (a client's own tool loop,
    continuing an answer) sent the last user message again as a new turn: the agent ran it
    twice. Refused, naming why; instructions after the user's message are fine."""
    fleet = start_fleet(fleet_factory)
    client = sdk(fleet)
    asked = len(llm_server.requests)
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    for tail in (
        [{"role": "assistant", "content": "partial answ"}],
        [{"role": "assistant", "content": None, "tool_calls": calls},
         {"role": "tool", "tool_call_id": "c1", "content": "42"}],
    ):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="m", messages=[user("do it"), *tail])
        assert bad.value.param == "messages", bad.value  # type: ignore[attr-defined]
        assert f"the last message is the {tail[-1]['role']!r} role's" in bad.value.message
        assert "not supported" in bad.value.message
    assert len(llm_server.requests) == asked  # nothing reached the agent
    done = client.chat.completions.create(
        model="m", messages=[user("fine"), {"role": "system", "content": "be brief"}]
    )
    assert done.choices[0].message.content == "echo: fine"


def test_a_trailing_slash_is_served_not_redirected(fleet_factory) -> None:
    """POST /v1/chat/completions/ was redirected (307) to an absolute http:// URL: wrong
    behind a TLS proxy, and the client sent its body twice. Both forms are served."""
    fleet = start_fleet(fleet_factory)
    with httpx.Client(base_url=fleet.base_url, follow_redirects=False, timeout=60) as http:
        resp = http.post("/v1/chat/completions/", json={"model": "m", "messages": [user("sl")]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "echo: sl"
        resp = http.get("/v1/models/")
        assert resp.status_code == 200 and resp.json()["object"] == "list", resp.text
        assert http.post("/api/message/", json={"text": "slash"}).status_code == 202
        for path in ("/webhooks/", "/webhooks", "/nope/"):  # no redirect, no loop
            assert http.get(path).status_code == 404, path


def test_half_a_surrogate_pair_is_replaced_not_a_server_error(fleet_factory) -> None:
    """JSON may escape half of a UTF-16 pair alone (a client that cut an emoji): the text
    is answered with U+FFFD in its place; in ``user`` (a session name) it is refused."""
    fleet = start_fleet(fleet_factory)
    url = f"{fleet.base_url}/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    cut = '{"model": "m", "messages": [{"role": "user", "content": "cut \\ud83e emoji"}]}'
    resp = httpx.post(url, content=cut, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "echo: cut \ufffd emoji"
    parts = (
        '{"model": "m", "messages": [{"role": "user", "content": '
        '[{"type": "text", "text": "part \\udc00"}]}]}'
    )
    resp = httpx.post(url, content=parts, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "echo: part \ufffd"
    named = '{"model": "m", "user": "bob\\ud800", "messages": [{"role": "user", "content": "x"}]}'
    resp = httpx.post(url, content=named, headers=headers, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "user", resp.text
