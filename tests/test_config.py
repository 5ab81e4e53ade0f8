"""The config schema and store: strict parsing with errors named by path, dotted get/set,
masking, atomic writes and the API key fallback."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from beat_schedules.sentinel import check
from claw_worker import constants as k
from claw_worker.config import Config, ConfigError, current_config, load_config
from claw_worker.config.fields import MAX_PERIOD_SEC
from claw_worker.config.paths import config_path, logs_dir, workspace_dir
from claw_worker.config.store import (
    atomic_write_text,
    get_path,
    is_secret_path,
    load_config_data,
    mask_secrets,
    parse_config_text,
    parse_value,
    resolve_api_key,
    save_config_data,
    set_path,
    split_path,
)
from tests.fixtures.claw_home import ClawHome
from tests.fixtures.procs import wait_for


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "cfg.json")
    return str(info.value)


def test_empty_object_is_all_defaults() -> None:
    config = parse_config_text("{}")
    assert config == Config()
    assert config.gateway.port == 18790


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"gateway": {"bogus": 1}}', "gateway.bogus: unknown field"),
        ('{"gateway": {"port": "abc"}}', "gateway.port: Input should be a valid integer"),
        ('{"gateway": {"port": 70000}}', "gateway.port: Input should be less than or equal"),
        ('{"agents": {"defaults": {"max_tokens": 1.5}}}', "agents.defaults.max_tokens"),
        ('{"channels": {"telegram": {"enabled": "yes"}}}', "channels.telegram.enabled"),
        ('{"channels": {"slack": {}}}', "channels.slack: unknown field"),
        ('{"providers": {"proxies": {"x": {"api_base": "ftp://h"}}}}', "providers.proxies.x"),
        ('{"providers": {"proxy_fallbacks": ["nope"]}}', "nope"),
        ('{"redis": {"url": "http://h"}}', "redis.url: url must start with redis://"),
        (
            '{"tools": {"web_fetch": {"allowed_hosts": ["10.0.0.0/33"]}}}',
            "tools.web_fetch.allowed_hosts: '10.0.0.0/33' is not a network like 10.0.0.0/8",
        ),
        (
            '{"tools": {"web_fetch": {"allowed_hosts": ["wiki lan"]}}}',
            "'wiki lan' is not a host name, address or network",
        ),
        ('{"agents": {"defaults": {"memory": {"search": "semantic"}}}}', "memory.search"),
        # URLs that start right but could never be reached, refused when read
        (
            '{"providers": {"proxy": {"api_base": "http://"}}}',
            "providers.proxy.api_base: must be a URL with a host",
        ),
        ('{"providers": {"proxy": {"api_base": "http://h:99999/v1"}}}', "has a bad port"),
        (
            '{"channels": {"whatsapp": {"bridge_url": "http://127.0.0.1:3001"}}}',
            "channels.whatsapp.bridge_url: must start with ws:// or wss://",
        ),
        (
            '{"channels": {"telegram": {"webhook_url": "https:// bot.example.com"}}}',
            "channels.telegram.webhook_url: must be a URL with a host and no spaces",
        ),
        (
            '{"tools": {"web_search": {"searxng_url": "searx.lan:8888"}}}',
            "tools.web_search.searxng_url: must start with http:// or https://",
        ),
        ('{"channels": {"qq": {"token_url": ""}}}', "channels.qq.token_url: token_url must be set"),
        # names that could never match, patterns that match every command
        ('{"channels": {"telegram": {"allow_from": [" 12"]}}}', "' 12' has spaces around it"),
        ('{"providers": {"proxy": {"models": ["", "m"]}}}', "an entry is empty"),
        ('{"agents": {"defaults": {"model": "gpt-4o "}}}', "agents.defaults.model: 'gpt-4o '"),
        ('{"tools": {"exec": {"deny_patterns": ["rm|"]}}}', "'rm|' matches the empty text"),
        # admins that could never match a sender
        (
            '{"gateway": {"admins": ["123456789"]}}',
            "gateway.admins: '123456789' is not <channel>:<sender_id>",
        ),
        ('{"gateway": {"admins": ["openai:bob"]}}', "'openai:bob' is not <channel>:<sender_id>"),
        # %-templates that would fail only when their reply is due (a failure reply lost)
        (
            '{"agents": {"defaults": {"texts": {"sender_busy": "busy, try later"}}}}',
            "agents.defaults.texts.sender_busy: must be a %-template taking one "
            "%d (the sender's runs going on)",
        ),
        (
            '{"agents": {"defaults": {"texts": {"message_failed": "failed: %d"}}}}',
            "agents.defaults.texts.message_failed: must be a %-template taking one %s (the error)",
        ),
        (
            '{"agents": {"defaults": {"texts": {"token_budget_used_up": "100% used"}}}}',
            "write %% for a literal %",
        ),
    ],
)
def test_schema_errors_name_the_dotted_path(text: str, expected: str) -> None:
    message = config_error(text)
    assert message.startswith("cfg.json: invalid config")
    assert expected in message


def test_templates_may_reword_and_escape_percent() -> None:
    texts = parse_config_text(
        '{"agents": {"defaults": {"texts": {"sender_busy": "%d at once: 100%% busy",'
        ' "message_failed": "Oops (%s)"}}}}'
    ).agents.defaults.texts
    assert texts.sender_busy % 2 == "2 at once: 100% busy"
    assert texts.message_failed % "boom" == "Oops (boom)"


def test_trailing_json_is_an_error_with_its_position() -> None:
    message = config_error('{"gateway": {}}\n{"extra": 1}')
    assert "line 2 column 1" in message
    assert "extra content after the JSON object" in message


def test_top_level_must_be_an_object() -> None:
    assert "top level must be a JSON object" in config_error("[1, 2]")


def test_strict_types_are_not_coerced() -> None:
    assert "gateway.token" in config_error('{"gateway": {"token": 12345}}')
    assert "worker.concurrency" in config_error('{"worker": {"concurrency": true}}')


def test_models_are_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.gateway.port = 1  # type: ignore[misc]


def test_dotted_get_and_set() -> None:
    data = set_path({}, "channels.telegram.enable", True)
    assert data == {"channels": {"telegram": {"enabled": True}}}
    data = set_path(data, "gateway.port", 8080)
    config = parse_config_text(json.dumps(data))
    assert get_path(config, "gateway.port") == 8080
    assert get_path(config, "channels.telegram.enable") is True
    assert get_path(config, "gateway")["host"] == "127.0.0.1"


def test_set_path_copies_and_refuses_to_descend_into_a_value() -> None:
    original = {"gateway": {"port": 1}}
    set_path(original, "gateway.port", 2)
    assert original == {"gateway": {"port": 1}}
    with pytest.raises(ConfigError, match="'port' is a value, not a section"):
        set_path(original, "gateway.port.x", 3)


def test_unknown_get_path_lists_the_valid_fields() -> None:
    with pytest.raises(ConfigError) as info:
        get_path(Config(), "gateway.prot")
    assert "no field 'prot' under gateway" in str(info.value)
    assert "port" in str(info.value)


@pytest.mark.parametrize("bad", ["", ".", "gateway.", "a..b"])
def test_bad_dotted_paths(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a dotted config path"):
        split_path(bad)


def test_parse_value_json_else_string() -> None:
    assert parse_value("8080") == 8080
    assert parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value('"abc"') == "abc"
    assert parse_value("http://h:1/v1") == "http://h:1/v1"


def test_mask_secrets_masks_secret_strings_only() -> None:
    config = Config.model_validate(
        {
            "providers": {"proxy": {"api_key": "sk-live-1234567890"}},
            "channels": {"telegram": {"token": "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"}},
            "gateway": {"token": "short"},
        }
    )
    masked = mask_secrets(config.model_dump(mode="json"))
    text = json.dumps(masked)
    assert "1234567890" not in text
    assert "ABCDEFGHIJ" not in text
    assert "short" not in text
    assert masked["providers"]["proxy"]["api_key"] == "sk-****"
    assert masked["agents"]["defaults"]["max_tokens"] == 4096  # numbers are never secrets
    assert masked["agents"]["defaults"]["heartbeat"]["ack_max_chars"] == 64
    assert mask_secrets("sk-live-1234567890", "providers.proxy.api_key") == "sk-****"
    assert is_secret_path(("channels", "feishu", "app_secret"))
    assert is_secret_path(("providers", "proxies", "backup", "api_key"))  # named entries too
    assert not is_secret_path(("agents", "defaults", "heartbeat", "ack_max_chars"))


def test_secrets_are_the_marked_fields_not_words_in_names() -> None:
    """memory_recall_keywords contains "key": its words are no secret, in config get or in
    the logs (they were masked everywhere, "remember" included)."""
    from claw_worker.logs import Redactor, config_secrets, is_secret_field

    config = Config.model_validate(
        {
            "providers": {"proxy": {"api_key": "sk-live-1234567890"}},
            "redis": {"url": "redis://:redis-pass-99@127.0.0.1:6379/0"},
        }
    )
    texts = mask_secrets(config.model_dump(mode="json"))["agents"]["defaults"]["texts"]
    assert "remember" in texts["memory_recall_keywords"]
    assert mask_secrets(config.model_dump(mode="json"))["redis"]["url"] == (
        "redis://:****@127.0.0.1:6379/0"
    )
    secrets = config_secrets(config)
    assert set(secrets) == {"sk-live-1234567890", "redis-pass-99"}
    redactor = Redactor(secrets)
    assert redactor.scrub("remember my preference, decision made") == (
        "remember my preference, decision made"
    )
    assert "sk-live" not in redactor.scrub("key sk-live-1234567890 here")
    assert not is_secret_field("memory_recall_keywords") and not is_secret_field("total_tokens")
    assert is_secret_field("api_key") and is_secret_field("gateway_token")


def test_save_is_atomic_with_backup_and_private(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save_config_data(path, {"gateway": {"port": 1000}})
    first = path.read_bytes()
    save_config_data(path, {"gateway": {"port": 2000}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "config.json.bak"]
    assert (tmp_path / "config.json.bak").read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path).gateway.port == 2000
    assert load_config_data(path) == {"gateway": {"port": 2000}}


def test_save_refuses_invalid_data_and_leaves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    save_config_data(path, {"gateway": {"port": 1000}})
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"gateway\.port"):
        save_config_data(path, {"gateway": {"port": "x"}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_failed_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "bad \ud800 surrogate")  # fails half-way through the write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.json") == Config()


def test_api_key_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLAW_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_api_key("") == ""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert resolve_api_key("") == "sk-openai"
    monkeypatch.setenv("CLAW_API_KEY", "sk-claw")
    assert resolve_api_key("") == "sk-claw"
    assert resolve_api_key("sk-configured") == "sk-configured"


def test_paths_follow_claw_home_and_claw_config(
    claw_home: ClawHome, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert config_path() == claw_home.config_file
    assert workspace_dir(Config()) == claw_home.workspace
    assert logs_dir(Config()) == claw_home.path / "logs"
    claw_home.write_config({"gateway": {"port": 1111}})
    assert current_config().gateway.port == 1111

    other = tmp_path / "other.json"
    other.write_text('{"gateway": {"port": 2222}}')
    monkeypatch.setenv("CLAW_CONFIG", str(other))
    assert config_path() == other
    assert current_config().gateway.port == 2222
    custom = Config.model_validate({"agents": {"defaults": {"workspace": str(tmp_path / "ws")}}})
    assert workspace_dir(custom) == tmp_path / "ws"


# Periods time drives: beat's intervals, TTLs and quiet times in Redis.
PERIODS = [
    "sentinel.interval_sec",
    "sentinel.alert_quiet_sec",
    "sentinel.stuck_run_sec",
    "agents.defaults.heartbeat.every_sec",
    "agents.defaults.runtime_control.autonomy_tick_interval_sec",
    "agents.defaults.runtime_control.autonomy_min_run_interval_sec",
    "agents.defaults.runtime_control.autonomy_idle_threshold_sec",
    "agents.defaults.runtime_control.autonomy_max_pending_duration_sec",
    "agents.defaults.runtime_control.run_state_ttl_seconds",
    "worker.sweep_interval_sec",
]


def _nested(dotted: str, value: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


@pytest.mark.parametrize("dotted", PERIODS)
def test_a_period_past_a_year_is_refused(claw_home: ClawHome, dotted: str) -> None:
    """10**12 s passed `config check`; then beat died at start (OverflowError: an interval
    ending after the year 9999) and Redis refused the TTLs ("invalid expire time")."""
    claw_home.write_config(_nested(dotted, 10**12))
    result = claw_home.clawctl("config", "check")
    assert result.returncode == 1, result.stdout
    assert dotted in result.stderr and "less than or equal to 31622400" in result.stderr


def test_every_period_at_its_longest_is_usable(fleet_factory: Any) -> None:
    """The bound itself is safe: beat schedules each interval, Redis takes each TTL."""
    fleet = fleet_factory(**{dotted.replace(".", "__"): MAX_PERIOD_SEC for dotted in PERIODS})
    r = fleet.redis.client()
    beat = fleet.start_beat()
    started = time.time()
    keys = [f"{k.BEAT_KEY_PREFIX}{name}" for name in
            ("sentinel", "heartbeat", "autonomy-tick", "session-sweeper")]  # fmt: skip
    # RedBeat runs an entry first one interval after it is written.
    due = wait_for(lambda: all(r.zscore(k.BEAT_SCHEDULE, key) for key in keys) and
                   [r.zscore(k.BEAT_SCHEDULE, key) for key in keys], timeout=30,
                   what="beat's entries")  # fmt: skip
    assert all(at >= started + MAX_PERIOD_SEC - 60 for at in due), due
    check(r, load_config(fleet.home.config_file))  # no workspace: an alert, quiet a year
    assert r.ttl(k.sentinel_alert_key("workspace")) > MAX_PERIOD_SEC - 60
    assert beat.poll() is None, fleet.output("beat")
