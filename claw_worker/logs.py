"""Logging for every clawfleet process: JSON lines to a rotating file, readable lines on stderr.

Call :func:`setup_logging` once at process start (the worker from Celery's
``setup_logging`` signal, so Celery leaves logging alone; the ingress before uvicorn starts,
with ``log_config=None``; ``clawctl`` commands that run the agent). Calling it again replaces
the handlers it installed, so it is safe to call twice.

Log with structlog and pass facts as keyword arguments, never formatted into the message::

    log = structlog.get_logger(__name__)
    log.info("message done", **message_fields(message), assistant_content_length=len(reply))

Field names to use, so logs can be searched the same way everywhere (SPEC "Logging"):
``channel``, ``chat_id``, ``sender_id``, ``session_key``, ``message_id``, ``preview`` (the first
characters of a text), ``error``, ``message_content_length``, ``assistant_content_length``
(the agent's reply), ``output_content_length`` (what was delivered), ``transcript_length``
(the session history's messages after the turn). A message's events: ``message received``
(the ingress, at DEBUG: a line per request costs as much as the rest of accepting it),
``message started``, ``message done`` / ``failed`` / ``cancelled`` (the worker, with
``queue_wait_ms``), ``message delivered`` (the ingress), found by ``message_id``.

Stdlib loggers (Celery, kombu, uvicorn, httpx) go through the same handlers and formatters
(structlog's ``ProcessorFormatter``), so one file holds one JSON object per line whoever logged.

Every line passes the redactor (``redact.py``) with the config's secrets: once in structlog's
chain for its events, in each handler's formatter for stdlib records.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from claw_worker.config.paths import logs_dir
from claw_worker.config.schema import Config
from claw_worker.config.store import secret_values
from claw_worker.log_files import LogsDir
from claw_worker.redact import MASK, Redactor, is_secret_field

__all__ = ["MASK", "Redactor", "is_secret_field", "setup_console", "setup_logging"]

# Rotation is by size; age-based retention deletes the rest. This bounds one process's disk
# use at (BACKUP_COUNT + 1) * max_size_mb even inside the retention window.
BACKUP_COUNT = 10
REOPEN_CHECK_SEC = 5.0
# Libraries that log every request at INFO: kept to warnings unless debugging.
CHATTY_LOGGERS = ("httpx", "httpcore", "telegram", "websockets")
# Loggers that install their own handlers; routed to ours instead.
ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")
PREVIEW_CHARS = 80  # the ``preview`` field: the first characters of a message's text
# A secret cut in two by the preview would no longer look like one: scrub this much first.
_PREVIEW_SCRUB_CHARS = PREVIEW_CHARS + 200


def preview(text: str) -> str:
    """The ``preview`` field: the first PREVIEW_CHARS characters of ``text``, scrubbed
    before the cut (a secret cut in two would no longer be recognised)."""
    return _redactor.scrub(text[:_PREVIEW_SCRUB_CHARS])[:PREVIEW_CHARS]


def message_fields(message: Any) -> dict[str, Any]:
    """The fields every event about an inbound message carries (SPEC "Logging"):
    ``channel``, ``chat_id``, ``sender_id``, ``session_key``, ``message_id``, ``preview``,
    ``message_content_length``. ``message``: an ``InboundMessage``."""
    text = message.text
    return {
        "channel": message.channel, "chat_id": message.chat_id,
        "sender_id": message.sender_id, "session_key": message.session_key,
        "message_id": message.message_id, "preview": preview(text),
        "message_content_length": len(text),
    }  # fmt: skip


def config_secrets(config: Config) -> list[str]:
    """Every secret string the config holds (fields marked secret in the schema, the API
    key the proxy falls back to, the Redis password): scrubbed from every log line."""
    return secret_values(config)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Rotating file created 0600: logs hold user messages and must not be world-readable.

    If the file disappears under it (retention removed a file idle for ``retention_days``,
    or an operator deleted it), the next record reopens it, checked at most every
    ``REOPEN_CHECK_SEC`` so logging stays cheap.
    """

    _checked_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if self.stream is not None and now - self._checked_at >= REOPEN_CHECK_SEC:
            self._checked_at = now
            try:
                gone = os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
            except OSError:
                gone = True
            if gone:
                self.stream.close()
                self.stream = self._open()
        super().emit(record)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        # The stdlib's checks that the path is a regular file with two stat calls per record;
        # the file is ours (created 0600 by _open) and emit() notices when it is replaced.
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            return False
        self.stream.seek(0, 2)  # as the stdlib does: where the file ends
        return self.stream.tell() + len(self.format(record)) + 1 >= self.maxBytes

    def format(self, record: logging.LogRecord) -> str:
        # shouldRollover() formats each record to measure it and emit() formats it again;
        # formatting (redaction included) is the costly part, so do it once.
        cached = record.__dict__.get("_claw_file_text")
        if cached is not None and cached[0] is self:
            return cached[1]
        text = super().format(record)
        record.__dict__["_claw_file_text"] = (self, text)
        return text

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
# The redactor of the last setup (its config's secrets). A structlog event is redacted once,
# here, for every handler; a stdlib record (Celery, uvicorn, httpx) in each handler's
# formatter, as only the formatter sees it.
_redactor = Redactor()


def _redact(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> Any:
    return _redactor(_l, _m, event_dict)


def _configure_structlog(redactor: Redactor) -> None:
    # No logger caching: modules create their loggers at import, possibly before setup, and
    # must still pick up this configuration.
    global _redactor
    _redactor = redactor
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.processors.format_exc_info,  # before redaction: tracebacks hold values
            _redact,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _formatter(renderer: Any, redactor: Redactor, process_name: str = "") -> logging.Formatter:
    def redact_foreign(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> Any:
        if event_dict.get("_from_structlog"):
            return event_dict  # redacted once in structlog's chain
        return redactor(_l, _m, event_dict)

    def add_process(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> Any:
        if process_name:
            # Always this process's name, whatever an event passed: it is what marks a file
            # in the logs directory as clawfleet's own (log_files.py).
            event_dict["process"] = process_name
            event_dict.setdefault("pid", os.getpid())  # per call: prefork children differ
        return event_dict

    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.processors.format_exc_info,  # before redaction: tracebacks hold values
            redact_foreign,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            add_process,
            renderer,
        ],
    )


def _install(handlers: list[logging.Handler], level: int) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_claw", False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler._claw = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for name in ROUTED_LOGGERS:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
    for name in CHATTY_LOGGERS:  # a line per HTTP request (a long poll every 30 s) is noise
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _console_handler(redactor: Redactor, level: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    handler.setFormatter(_formatter(renderer, redactor))
    handler.setLevel(level)
    return handler


def setup_console(*, debug: bool = False) -> None:
    """Console-only logging (warnings, or everything with ``debug``): for short commands."""
    redactor = Redactor()
    _configure_structlog(redactor)
    level = logging.DEBUG if debug else logging.WARNING
    _install([_console_handler(redactor, level)], level)


def remove_expired(directory: Path, process_name: str, retention_days: int) -> list[Path]:
    """Delete clawfleet's logs not written to for the retention period: rotated files, and
    the files of processes long gone (node names carry the pid, so every restart starts a
    new file). Only clawfleet's own files (``log_files.py``): the directory may be shared.

    A live process's file is written to all the time (a worker logs its sweeps), and if an
    idle one is removed anyway, its handler reopens it on the next record.
    """
    cutoff = time.time() - retention_days * 86400
    removed = []
    with LogsDir(directory) as logs:
        for log in logs.own_logs():
            if log.mtime < cutoff and logs.remove(log):
                removed.append(directory / log.name)
    return removed


def setup_logging(
    config: Config, process_name: str, *, console: bool = True, debug: bool = False
) -> Path | None:
    """Route all logging of this process to ``logs_dir/<process_name>.log`` and stderr.

    ``process_name`` must be unique among processes sharing the logs directory: one file
    has one writer, so rotation never races. Returns the log file, or None when file logging
    is off (``logging.enabled=false``).
    """
    level = logging.DEBUG if debug else getattr(logging, config.logging.level)
    redactor = Redactor(config_secrets(config))
    _configure_structlog(redactor)
    handlers: list[logging.Handler] = []
    log_file: Path | None = None
    if config.logging.enabled:
        directory = logs_dir(config)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_expired(directory, process_name, config.logging.retention_days)
        log_file = directory / f"{process_name}.log"
        file_handler = PrivateRotatingFileHandler(
            log_file,
            maxBytes=config.logging.max_size_mb * 1024 * 1024,
            backupCount=BACKUP_COUNT,
            encoding="utf-8",
        )
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        file_handler.setFormatter(_formatter(renderer, redactor, process_name))
        handlers.append(file_handler)
    if console:
        handlers.append(_console_handler(redactor, level))
    if not handlers:
        handlers.append(logging.NullHandler())  # else stdlib's last resort prints to stderr
    _install(handlers, level)
    return log_file
