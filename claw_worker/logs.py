"""Logging for every clawfleet process: JSON lines to a rotating file, readable lines on stderr.

Call :func:`setup_logging` once at process start (the worker from Celery's
``setup_logging`` signal, so Celery leaves logging alone; the ingress before uvicorn starts,
with ``log_config=None``; ``clawctl`` commands that run the agent). Calling it again replaces
the handlers it installed, so it is safe to call twice.

Log with structlog and pass facts as keyword arguments, never formatted into the message::

    log = structlog.get_logger(__name__)
    log.info("message.received", channel="telegram", chat_id="42", sender_id="7",
             preview=text[:80], message_content_length=len(text))

Field names to use, so logs can be searched the same way everywhere (SPEC "Logging"):
``channel``, ``chat_id``, ``sender_id``, ``session_key``, ``message_id``, ``preview`` (the first
characters of a text), ``error``, ``message_content_length``, ``assistant_content_length``,
``output_content_length``, ``transcript_length``.

Stdlib loggers (Celery, kombu, uvicorn, httpx) go through the same handlers and formatters
(structlog's ``ProcessorFormatter``), so one file holds one JSON object per line whoever logged.

Every line passes a redactor: values of fields named as credentials (``api_key``, ``token``,
``*_secret``, ``password``, ``authorization``: see ``SECRET_FIELD``) are masked, and strings
are scrubbed of things that look like API keys, bearer tokens and Telegram bot tokens, and of
the secrets in the config itself (the fields marked secret in the schema).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from claw_worker.config.paths import logs_dir
from claw_worker.config.schema import Config
from claw_worker.config.store import secret_values

MASK = "****"
# Rotation is by size; age-based retention deletes the rest. This bounds one process's disk
# use at (BACKUP_COUNT + 1) * max_size_mb even inside the retention window.
BACKUP_COUNT = 10
REOPEN_CHECK_SEC = 5.0
# Literal config secrets shorter than this are not scrubbed from free text: masking "abc"
# wherever it appears would wreck the logs and protect nothing.
MIN_LITERAL_SECRET = 6
# Log fields whose value is masked whole: a credential by its name (``api_key``,
# ``gateway_token``, ``app_secret``, ``authorization`` ...). Not a word inside a name: a
# field like ``memory_recall_keywords`` or ``total_tokens`` holds no secret.
SECRET_FIELD = re.compile(
    r"(?:^|_)(?:api_?key|token|secret|password|passwd|authorization|credentials?)$", re.I
)
# Libraries that log every request at INFO: kept to warnings unless debugging.
CHATTY_LOGGERS = ("httpx", "httpcore", "telegram", "websockets")
# Loggers that install their own handlers; routed to ours instead.
ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-" + MASK),
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), MASK),  # Telegram bot token
    (re.compile(r"(?i)\bbot\d{5,}:[A-Za-z0-9_-]{30,}"), "bot" + MASK),  # ...inside a URL path
    (
        re.compile(r"(?i)((?:api[_-]?key|token|secret|password)=)[^&\s\"']+"),
        r"\1" + MASK,
    ),
    # A password in a URL. The scheme is bounded so a long word cannot make this quadratic.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,15}://[^:/\s@]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
)


def is_secret_field(name: str) -> bool:
    return SECRET_FIELD.search(name) is not None


class Redactor:
    """A structlog processor that masks secrets anywhere in the event dict."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = sorted({s for s in secrets if len(s) >= MIN_LITERAL_SECRET}, key=len)
        # Longest first, so a secret that contains another is masked whole.
        self._literal = (
            re.compile("|".join(re.escape(s) for s in reversed(literals))) if literals else None
        )

    def scrub(self, text: str) -> str:
        if self._literal is not None:
            text = self._literal.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def _clean(self, value: Any, secret: bool) -> Any:
        if isinstance(value, str):
            return (MASK if value else value) if secret else self.scrub(value)
        if isinstance(value, bytes):
            return MASK if secret else self.scrub(value.decode("utf-8", "replace"))
        if isinstance(value, dict):
            return {k: self._clean(v, secret or is_secret_field(str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self._clean(v, secret) for v in value]
        if secret and not isinstance(value, int | float | bool) and value is not None:
            return MASK  # an object under a secret name: its repr may hold the secret
        return value  # numbers stay: a token *count* is not a secret

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(value, is_secret_field(key))
        return event_dict


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


def _configure_structlog() -> None:
    # The per-setup parts (redactor, renderers) live in the handlers' formatters, so this
    # global part never changes. No logger caching: modules create their loggers at import,
    # possibly before setup, and must still pick up this configuration.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _formatter(renderer: Any, redactor: Redactor, process_name: str = "") -> logging.Formatter:
    def add_process(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> Any:
        if process_name:
            event_dict.setdefault("process", process_name)
            event_dict.setdefault("pid", os.getpid())  # per call: prefork children differ
        return event_dict

    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            add_process,
            structlog.processors.format_exc_info,  # before redaction: tracebacks hold values
            redactor,
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
    _configure_structlog()
    level = logging.DEBUG if debug else logging.WARNING
    _install([_console_handler(Redactor(), level)], level)


def remove_expired(directory: Path, process_name: str, retention_days: int) -> list[Path]:
    """Delete logs not written to for the retention period: rotated files, and the files of
    processes long gone (node names carry the pid, so every restart starts a new file).

    A live process's file is written to all the time (a worker logs its sweeps), and if an
    idle one is removed anyway, its handler reopens it on the next record.
    """
    cutoff = time.time() - retention_days * 86400
    removed = []
    for path in directory.glob("*.log*"):
        if re.fullmatch(r".+\.log(\.\d+)?", path.name) is None:
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another process removed it first
            continue
    return removed


def setup_logging(
    config: Config, process_name: str, *, console: bool = True, debug: bool = False
) -> Path | None:
    """Route all logging of this process to ``logs_dir/<process_name>.log`` and stderr.

    ``process_name`` must be unique among processes sharing the logs directory: one file
    has one writer, so rotation never races. Returns the log file, or None when file logging
    is off (``logging.enabled=false``).
    """
    _configure_structlog()
    level = logging.DEBUG if debug else getattr(logging, config.logging.level)
    redactor = Redactor(config_secrets(config))
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
