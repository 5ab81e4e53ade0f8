"""Logging: JSON lines in a rotating file, secrets redacted, retention, idempotent setup."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from claw_worker.config import Config
from claw_worker.logs import BACKUP_COUNT, Redactor, remove_expired, setup_logging
from tests.fixtures.log_dirs import age, snapshot, write_foreign_files, write_own_logs

API_KEY = "sk-live-abcdefghijklmnopqrstuvwxyz"
TELEGRAM_TOKEN = "123456789:AAEhBP0av28KfjG3sV8qFD1dLr8cw7qk0a2"
GATEWAY_TOKEN = "gw-token-7f3a9c2e11"  # matches no pattern: only the config says it is secret


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.reset_defaults()


def make_config(tmp_path: Path, **logging_overrides: Any) -> Config:
    return Config.model_validate(
        {
            "providers": {"proxy": {"api_key": API_KEY}},
            "channels": {"telegram": {"token": TELEGRAM_TOKEN}},
            "gateway": {"token": GATEWAY_TOKEN},
            "logging": {"dir": str(tmp_path / "logs"), **logging_overrides},
        }
    )


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def read_lines(path: Path) -> list[dict[str, Any]]:
    flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_claw", False)]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_with_structured_fields(tmp_path: Path) -> None:
    log_file = setup_logging(make_config(tmp_path), "worker", console=False)
    assert log_file == tmp_path / "logs" / "worker.log"
    structlog.get_logger("claw.test").info(
        "message.received",
        channel="telegram",
        chat_id="42",
        sender_id="7",
        preview="hello there",
        message_content_length=11,
        assistant_content_length=5,
    )
    logging.getLogger("celery.worker").warning("stdlib says %s", "hi")
    first, second = read_lines(log_file)
    assert first["event"] == "message.received"
    assert first["channel"] == "telegram" and first["chat_id"] == "42"
    assert first["message_content_length"] == 11
    assert first["level"] == "info" and first["process"] == "worker"
    assert first["pid"] == os.getpid() and first["timestamp"].endswith("Z")
    assert second["event"] == "stdlib says hi"
    assert second["logger"] == "celery.worker" and second["level"] == "warning"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


@pytest.mark.usefixtures("restore_logging")
def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    log_file = setup_logging(make_config(tmp_path), "ingress", console=False)
    log = structlog.get_logger("claw.test")
    log.info("provider.call", api_key=API_KEY, headers={"Authorization": f"Bearer {API_KEY}"})
    log.info("free text", error=f"401 for key {API_KEY} and bot{TELEGRAM_TOKEN}/getMe")
    log.info("gateway", note=f"token was {GATEWAY_TOKEN}", password="hunter2", max_tokens=4096)
    log.warning("raw bearer", error="Authorization: Bearer abc.def-ghi_jkl")
    logging.getLogger("httpx").info("GET https://api.telegram.org/bot%s/getMe", TELEGRAM_TOKEN)
    logging.getLogger("redis").info("url redis://:s3cretpass@host:6379/0 and api_key=zzz123456")
    try:
        raise RuntimeError(f"boom with {API_KEY}")
    except RuntimeError:
        log.exception("failed")

    flush()
    text = log_file.read_text()
    for secret in (API_KEY, TELEGRAM_TOKEN, GATEWAY_TOKEN, "hunter2", "abc.def-ghi_jkl"):
        assert secret not in text
    assert "s3cretpass" not in text and "zzz123456" not in text
    lines = read_lines(log_file)
    assert lines[0]["api_key"] == "****"
    assert lines[0]["headers"]["Authorization"] == "****"
    assert lines[2]["max_tokens"] == 4096  # a count is not a secret
    assert "RuntimeError" in lines[-1]["exception"]  # the traceback is kept, scrubbed


def test_redactor_scrubs_patterns_and_literals() -> None:
    redactor = Redactor(["my-literal-secret", "abc"])  # "abc" is too short to scrub
    event = redactor(
        None,
        "info",
        {
            "event": "x my-literal-secret y abc",
            "nested": [{"token": "t"}, "Bearer qwertyuiop"],
            "session_key": "telegram:42",
        },
    )
    assert event["event"] == "x **** y abc"
    assert event["nested"] == [{"token": "****"}, "Bearer ****"]
    assert event["session_key"] == "telegram:42"


@pytest.mark.usefixtures("restore_logging")
def test_rotation_and_retention(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    old = time.time() - 3 * 86400
    # A restarted process has a new pid, so a new file: the old one ages out like rotations.
    expired = [logs / "worker.log.3", logs / "beat.log.1", logs / "beat-41@gone.log"]
    names = [*expired, logs / "worker.log.1", logs / "beat-42@live.log"]
    write_own_logs(logs, {path.name: 1 for path in names})
    (logs / "notes.txt").write_text("{}\n")
    for path in [*expired, logs / "notes.txt"]:
        os.utime(path, (old, old))

    config = make_config(tmp_path, max_size_mb=1, retention_days=2)
    log_file = setup_logging(config, "worker", console=False)
    assert log_file is not None
    handler = next(h for h in our_handlers() if isinstance(h, logging.FileHandler))
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.maxBytes == 1024 * 1024
    assert handler.backupCount == BACKUP_COUNT
    assert not any(p.exists() for p in expired)
    assert (logs / "worker.log.1").exists()  # still inside the retention window
    assert (logs / "beat-42@live.log").exists()  # written within the retention window
    assert (logs / "notes.txt").exists()  # not a log file

    log = structlog.get_logger("claw.test")
    for _ in range(1200):
        log.info("filler", preview="x" * 1000)
    flush()
    assert log_file.stat().st_size <= 1024 * 1024
    assert (logs / "worker.log.2").exists()  # rotated: the old .1 moved up
    read_lines(log_file)  # what remains still parses line by line


def test_retention_in_a_shared_directory_removes_only_clawfleets_own_files(
    tmp_path: Path,
) -> None:
    """``logging.dir`` may be shared (/var/log, an operator's directory): before, every idle
    ``*.log`` / ``*.log.<n>`` there went, syslog's rotations, an operator's notes and a
    symlink to a file elsewhere included."""
    logs, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"
    own = ["w1@h.log.3", "w1@h.log.2", "beat-41@gone.log", "ingress-7.log"]
    write_own_logs(logs, {name: 2 for name in [*own, "w1@h.log.1"]})
    write_foreign_files(logs, elsewhere, kb=2)
    age([*logs.iterdir(), *elsewhere.iterdir()], days=3)
    age([logs / "w1@h.log.1"], days=0.5)  # written within the retention window
    before = snapshot(logs, elsewhere)

    removed = remove_expired(logs, "worker", retention_days=2)
    assert sorted(path.name for path in removed) == sorted(own)
    after = snapshot(logs, elsewhere)
    assert {path.name for path in set(before) - set(after)} == set(own)
    assert all(after[path] == content for path, content in before.items() if path in after)
    assert (logs / "w1@h.log.1").exists()


@pytest.mark.usefixtures("restore_logging")
def test_setup_twice_replaces_handlers(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    setup_logging(config, "worker", console=True)
    setup_logging(config, "worker", console=True)
    handlers = our_handlers()
    assert len(handlers) == 2
    assert sum(isinstance(h, logging.FileHandler) for h in handlers) == 1
    structlog.get_logger().info("once")
    assert len(read_lines(tmp_path / "logs" / "worker.log")) == 1


@pytest.mark.usefixtures("restore_logging")
def test_file_logging_off_and_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, enabled=False, level="WARNING")
    assert setup_logging(config, "agent", console=True) is None
    log = structlog.get_logger("claw.test")
    log.info("hidden")
    log.warning("shown", api_key=API_KEY)
    err = capsys.readouterr().err
    assert "shown" in err and "hidden" not in err and API_KEY not in err
    assert not (tmp_path / "logs").exists()

    setup_logging(config, "agent", console=True, debug=True)
    log.debug("now visible")
    assert "now visible" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_logging")
def test_a_log_file_removed_under_a_live_process_is_reopened(tmp_path: Path) -> None:
    from claw_worker import logs as logs_module

    config = make_config(tmp_path)
    log_file = setup_logging(config, "worker-7@h", console=False)
    assert log_file is not None
    log = structlog.get_logger("claw.test")
    log.info("before")
    flush()
    log_file.unlink()  # retention (or an operator) removed it while the process is idle
    handler = next(h for h in our_handlers() if isinstance(h, logging.FileHandler))
    handler._checked_at = time.monotonic() - logs_module.REOPEN_CHECK_SEC  # check due now
    log.info("after")
    flush()
    assert [line["event"] for line in read_lines(log_file)] == ["after"]
