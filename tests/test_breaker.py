"""The circuit breaker guards an endpoint, not a proxy's name: once a reload corrects the
proxy's api_base (or key), the next call goes through at once, while the old endpoint stays
paused; ``clawctl status`` finds each proxy's breaker through ``proxy_breakers``."""

from __future__ import annotations

from typing import Any

import pytest

from claw_worker.config.schema import Config
from claw_worker.providers import FailoverProvider, ProviderError
from claw_worker.providers.breaker import read_state
from claw_worker.providers.registry import build_provider, endpoint_id, proxy_breakers
from tests.fixtures.procs import free_port
from tests.fixtures.redis_server import RedisServer
from tests.llm_server import LLMServer, error

USER = [{"role": "user", "content": "hello"}]


def config_for(api_base: str, api_key: str = "sk-good") -> Config:
    return Config.model_validate(
        {"providers": {"proxy": {"api_base": api_base, "api_key": api_key, "models": ["m1"]}}}
    )


def provider_for(config: Config, redis_server: RedisServer) -> FailoverProvider:
    provider = build_provider(config, redis_server.client(), breaker_threshold=2, cooldown_sec=600)
    assert isinstance(provider, FailoverProvider)
    return provider


def open_breaker(provider: FailoverProvider, calls: int = 2) -> None:
    for _ in range(calls):
        with pytest.raises(ProviderError):
            provider.chat(USER, None, "m1", 16, 0.0)


def test_a_corrected_api_base_is_tried_at_once(
    llm_server: LLMServer, redis_server: RedisServer
) -> None:
    wrong = config_for(f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    old = provider_for(wrong, redis_server)
    open_breaker(old)
    with pytest.raises(ProviderError) as skipped:
        old.chat(USER, None, "m1", 16, 0.0)
    assert "breaker_open" in str(skipped.value)  # the wrong address is paused ...
    # ... and the pause is the time until it is tried again (the runner defers that long).
    assert skipped.value.retryable and 590 < (skipped.value.retry_after or 0) <= 600

    fixed = config_for(llm_server.base_url)  # what a reload of the corrected config builds
    new = provider_for(fixed, redis_server)
    assert new.chat(USER, None, "m1", 16, 0.0).content == "echo: hello"
    assert len(llm_server.requests) == 1

    client = redis_server.client()  # what clawctl status reads, per proxy name
    assert read_state(client, proxy_breakers(wrong)["proxy"]).is_open()
    assert not read_state(client, proxy_breakers(fixed)["proxy"]).is_open()
    old.close()
    new.close()


def test_a_corrected_api_key_is_tried_at_once(
    llm_server: LLMServer, redis_server: RedisServer
) -> None:
    refused = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    llm_server.push(error(401, refused), error(401, refused))
    old = provider_for(config_for(llm_server.base_url, "sk-revoked"), redis_server)
    open_breaker(old)
    new = provider_for(config_for(llm_server.base_url, "sk-new"), redis_server)
    assert new.chat(USER, None, "m1", 16, 0.0).content == "echo: hello"
    assert llm_server.request_headers[-1]["authorization"] == "Bearer sk-new"
    old.close()
    new.close()


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"api_base": "http://H.example/v1/"}, {"api_base": "http://h.example/v1"}, True),
        ({"api_base": "http://h.example/v1"}, {"api_base": "http://h.example/v2"}, False),
        ({"api_base": "http://h.example/v1"},
         {"api_base": "http://h.example/v1", "protocol": "responses"}, False),
        ({"api_base": "http://h.example/v1", "api_key": "a"},
         {"api_base": "http://h.example/v1", "api_key": "b"}, False),
        ({"api_base": "http://h.example/v1", "models": ["x"], "timeout_sec": 5},
         {"api_base": "http://h.example/v1", "models": ["y"]}, True),
    ],
)  # fmt: skip
def test_the_endpoint_id(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    def ident(fields: dict[str, Any]) -> str:
        return endpoint_id(Config.model_validate({"providers": {"proxy": fields}}).providers.proxy)

    assert (ident(a) == ident(b)) is same
    key = ident({"api_base": "http://user:pw@h.example:8080/v1", "api_key": "sk-secret"})
    assert key.startswith("h.example:8080-") and "pw" not in key and "secret" not in key
