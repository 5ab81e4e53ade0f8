"""Config reload across the fleet: two phases over the control channel, an answer per process.

The coordinator (``clawctl config set|reload``, ``/config set``, ``/reload``) takes the
fleet-wide reload lock and broadcasts ``prepare`` with the changes (dotted path -> value)
or, for a reload, the whole file it was run on. Every registered process (workers, beat,
ingress, on every host) reads its own config file, applies the changes on top (or takes
the reloaded file instead), validates the result and checks what it needs locally (its log
directory, a worker's workspace), and answers. If any process rejects, the coordinator
broadcasts ``abort`` and nothing is applied anywhere; otherwise ``commit``: each process
writes the change into its own file when that file does not have it yet (another host's),
swaps its config snapshot in one assignment and answers again, naming the settings it can
only take at its next restart, those its environment overrides, and (a reload) where its
file differed.

Keys: ``claw:reload:lock`` (one reload at a time), ``claw:reload:<id>:acks`` (the answers,
a list with a TTL), and the registry of ``claw_worker/control.py``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import structlog

from claw_worker import constants as k
from claw_worker.config import apply_env_overrides, env_overridden
from claw_worker.config.local import check_local
from claw_worker.config.schema import Config
from claw_worker.config.store import (
    ConfigError,
    file_lock,
    get_path,
    read_only_message,
    read_raw_data,
    save_config_data,
    set_path,
    validate_config_data,
)
from claw_worker.control import ControlListener, live_processes
from claw_worker.process import ProcessIdentity
from claw_worker.redis_conn import delete_if_ours

log = structlog.get_logger(__name__)

PREPARE_TIMEOUT_SEC = 10.0
COMMIT_TIMEOUT_SEC = 10.0
LOCK_TTL_MS = 60_000
ACKS_TTL_SEC = 300
MAX_PENDING = 16  # prepared reloads kept waiting for their commit or abort

# Settings a running process cannot take without a restart, by role.
RESTART_PATHS: dict[str, tuple[str, ...]] = {
    "worker": (
        "redis.url",
        "worker.pool",
        "worker.concurrency",
        "worker.lease_sec",
        "worker.metrics_port",
        "worker.metrics_host",
    ),
    "beat": ("redis.url", "beat.lock_timeout_sec", "beat.max_loop_interval_sec"),
    "ingress": (
        "redis.url",
        "gateway.host",
        "gateway.port",
        "worker.message_ttl_sec",
        "agents.defaults.runtime_control.run_state_ttl_seconds",
        "agents.defaults.runtime_control.run_state_max",
    ),
}


class ReloadBusy(Exception):
    """Another reload holds the fleet-wide lock."""


class LiveConfig:
    """The config a process runs with: a frozen snapshot, replaced whole on reload.

    Readers take ``.config`` once per unit of work (a request, a drain) and keep that
    snapshot to its end, so no piece of work ever sees half of two configs.
    """

    def __init__(self, config: Config) -> None:
        self._config = config

    @property
    def config(self) -> Config:
        return self._config

    def swap(self, config: Config) -> Config:
        old, self._config = self._config, config
        return old


@dataclass(frozen=True)
class Answer:
    name: str
    role: str
    host: str
    pid: int
    ok: bool
    error: str = ""
    restart_needed: tuple[str, ...] = ()
    # Changed settings this process's environment overrides (path -> variable): not taken.
    overridden: dict[str, str] = field(default_factory=dict)
    # A reload: the settings where this process's file differed from the reloaded one.
    file_differed: tuple[str, ...] = ()

    @property
    def who(self) -> str:
        return f"{self.role} {self.name} (pid {self.pid})"


@dataclass
class ReloadOutcome:
    applied: bool  # no process rejected: the new config is in effect where it was heard
    rejected: list[Answer] = field(default_factory=list)
    committed: list[Answer] = field(default_factory=list)  # applied it
    failed: list[Answer] = field(default_factory=list)  # accepted, then could not apply
    silent: list[str] = field(default_factory=list)  # registered, never answered
    note: str = ""  # said after the answers (the fleet is on another Redis than configured)

    def describe(self) -> str:
        if not self.applied:
            lines = ["Rejected, nothing was applied:"]
            lines += [f"  {a.who}: {a.error}" for a in self.rejected]
        elif not (self.committed or self.failed):
            lines = ["No running clawfleet process: the config applies when they start."]
        else:
            full = [a for a in self.committed if not a.overridden]
            lines = [f"Applied by {len(full)} process(es):"]
            lines += [f"  {a.who}{_restart_note(a)}" for a in full]
            lines += [
                f"  {a.who}: its config file differed from the reloaded one at "
                f"{', '.join(a.file_differed)}; written to match it"
                for a in self.committed
                if a.file_differed
            ]
            lines += [f"  FAILED {a.who}: {a.error}" for a in self.failed]
            overridden = [a for a in self.committed if a.overridden]
            if overridden:
                lines.append(f"Not applied by {len(overridden)} process(es) for these settings:")
            for a in overridden:
                lines += [
                    f"  {a.who}: {path} overridden by {var} in this process's environment: "
                    "not applied"
                    for path, var in a.overridden.items()
                ]
                needed = ", ".join(a.restart_needed)
                lines += [f"  {a.who}: restart needed for {needed}"] if needed else []
        lines += [f"  no answer from {name} (stopped?)" for name in self.silent]
        lines += [self.note] if self.note else []
        return "\n".join(lines)


def _restart_note(answer: Answer) -> str:
    needed = answer.restart_needed
    return f" (restart needed for {', '.join(needed)})" if needed else ""


# -- the coordinator -------------------------------------------------------------------------


def reload_fleet(
    client: redis.Redis,
    changes: dict[str, Any] | None = None,
    *,
    document: dict[str, Any] | None = None,
    prepare_timeout: float = PREPARE_TIMEOUT_SEC,
    commit_timeout: float = COMMIT_TIMEOUT_SEC,
) -> ReloadOutcome:
    """Ask every running process to take the config: its own file with ``changes`` applied
    (a set), or ``document``, the whole file a reload was run on, then written into its own
    file when that differs, so that every host runs and keeps one config."""
    token = uuid.uuid4().hex
    if not client.set(k.RELOAD_LOCK, token, nx=True, px=LOCK_TTL_MS):
        raise ReloadBusy("another config reload is under way; try again in a few seconds")
    try:
        reload_id = uuid.uuid4().hex
        expected = {p["key"]: p["name"] for p in live_processes(client)}
        _broadcast(client, reload_id, "prepare", changes, document)
        prepared = _collect(client, reload_id, "prepare", set(expected), prepare_timeout)
        rejected = [a for a in prepared.values() if not a.ok]
        silent = [name for key, name in expected.items() if key not in prepared]
        if rejected:
            _broadcast(client, reload_id, "abort", changes, None)
            return ReloadOutcome(False, rejected=rejected, silent=silent)
        _broadcast(client, reload_id, "commit", changes, document)
        done = _collect(client, reload_id, "commit", set(prepared), commit_timeout)
        silent += [prepared[key].who for key in prepared if key not in done]
        return ReloadOutcome(
            True,
            committed=[a for a in done.values() if a.ok],
            failed=[a for a in done.values() if not a.ok],
            silent=silent,
        )
    finally:
        delete_if_ours(client, k.RELOAD_LOCK, token)


def _broadcast(
    client: redis.Redis, reload_id: str, phase: str, changes: Any, document: Any
) -> None:
    event = {"op": "reload", "id": reload_id, "phase": phase, "changes": changes or {}}
    if document is not None:
        event["document"] = document
    client.publish(k.CONTROL_CHANNEL, json.dumps(event))


def _collect(
    client: redis.Redis, reload_id: str, phase: str, waiting: set[str], timeout: float
) -> dict[str, Answer]:
    """Answers of ``phase`` by process key, until all of ``waiting`` answered or timeout."""
    answers: dict[str, Answer] = {}
    deadline = time.monotonic() + timeout
    acks = k.reload_acks_key(reload_id)
    while not waiting <= answers.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        item = client.blpop([acks], timeout=max(0.1, min(left, 1.0)))
        if item is None:
            continue
        ack = json.loads(item[1])
        if ack.get("phase") == phase:
            answers[ack["key"]] = Answer(**ack["answer"])
    return answers


# -- the process side ------------------------------------------------------------------------


def _taken(
    path: Path, changes: dict[str, Any], document: dict[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """The data to take (``document`` if given, else the file's) with ``changes`` applied,
    and the settings where the file differs from it (empty: the file has it already)."""
    data = read_raw_data(path)
    new = data if document is None else document
    for dotted, value in changes.items():
        new = set_path(new, dotted, value)
    return new, _differing(data, new)


def _differing(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the leaves (values that are not objects) that differ."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "(the whole file)"]
    return [
        found
        for name in dict.fromkeys([*old, *new])
        for found in _differing(old.get(name), new.get(name), f"{prefix}.{name}".lstrip("."))
    ]


class ReloadParticipant:
    """Validates on ``prepare``, swaps the snapshot on ``commit``, answers each phase."""

    def __init__(
        self,
        client: redis.Redis,
        ident: ProcessIdentity,
        *,
        config_file: Callable[[], Path],
        current: Callable[[], Config],
        apply: Callable[[Config], None],
    ) -> None:
        self.redis = client
        self.ident = ident
        self.config_file = config_file
        self.current = current
        self.apply = apply
        self._pending: dict[str, tuple[Config, Config]] = {}
        # What the file said when this process last took it (before the environment's
        # overrides): a reload's changes are what differs from it. Read only when the
        # environment overrides something, the one case ``_overridden`` looks at it.
        self._from_file: Config | None = _file_config(config_file()) if env_overridden() else None

    def attach(self, listener: ControlListener) -> None:
        listener.on("reload", self.on_event)

    def on_event(self, event: dict[str, Any]) -> None:
        reload_id, phase = str(event.get("id")), event.get("phase")
        changes = event.get("changes") or {}
        document = event.get("document")  # a reload: the file it was run on, whole
        if phase == "prepare":
            while len(self._pending) >= MAX_PENDING:  # a coordinator died between phases
                self._pending.pop(next(iter(self._pending)))
            try:
                self._pending[reload_id] = self._candidate(changes, document)
            except ConfigError as exc:
                self._answer(reload_id, phase, ok=False, error=str(exc))
            else:
                self._answer(reload_id, phase, ok=True)
        elif phase == "commit":
            try:
                pending = self._pending.pop(reload_id, None)
                if pending is None:  # started after the prepare: take it now
                    pending = self._candidate(changes, document)
                candidate, from_file = pending
                differed = self._persist(changes, document)
                restart = self._restart_needed(candidate)
                overridden = self._overridden(from_file)
                self.apply(candidate)
                self._from_file = from_file
            except (ConfigError, OSError) as exc:
                log.error("config reload failed to apply", error=str(exc))
                self._answer(reload_id, phase, ok=False, error=str(exc))
            else:
                log.info("config reloaded", restart_needed=restart, overridden=overridden,
                         file_differed=differed)  # fmt: skip
                self._answer(reload_id, phase, ok=True, restart_needed=restart,
                             overridden=overridden, file_differed=differed)  # fmt: skip
        elif phase == "abort":
            self._pending.pop(reload_id, None)

    def _candidate(
        self, changes: dict[str, Any], document: dict[str, Any] | None
    ) -> tuple[Config, Config]:
        """The config to run (the environment's overrides applied) and the file's part."""
        path = self.config_file()
        data, missing = _taken(path, changes, document)
        if missing and not _writable(path):
            raise ConfigError(read_only_message(path, OSError(30, "read-only")))
        from_file = validate_config_data(data, str(path))
        config = apply_env_overrides(from_file)
        check_local(config, self.ident.role)
        return config, from_file

    def _overridden(self, from_file: Config) -> dict[str, str]:
        """Path -> variable for each setting the change gives a value that this process's
        environment overrides with another: the file has it, this process never takes it
        (nor at a restart, while the variable is set)."""
        before = self._from_file
        taken = apply_env_overrides(from_file)  # as this process parsed them: a port is an int
        return {
            path: var
            for path, var in env_overridden().items()
            if get_path(taken, path) != get_path(from_file, path)
            and (before is None or get_path(before, path) != get_path(from_file, path))
        }

    def _persist(self, changes: dict[str, Any], document: dict[str, Any] | None) -> tuple[str, ...]:
        """Write the change into this host's file unless it has it (the origin's has); for
        a reload, the settings where the file differed (the first process of a host to take
        the lock writes it, and says so)."""
        if not changes and document is None:
            return ()
        path = self.config_file()
        with file_lock(path):
            data, missing = _taken(path, changes, document)
            if missing:
                save_config_data(path, data)
        return tuple(missing) if document is not None else ()

    def _restart_needed(self, candidate: Config) -> tuple[str, ...]:
        old = self.current()
        return tuple(
            p
            for p in RESTART_PATHS.get(self.ident.role, ())
            if get_path(old, p) != get_path(candidate, p)
        )

    def _answer(self, reload_id: str, phase: str, **fields: Any) -> None:
        answer = Answer(self.ident.name, self.ident.role, self.ident.host, self.ident.pid, **fields)
        ack = json.dumps({"phase": phase, "key": self.ident.key, "answer": asdict(answer)})
        acks = k.reload_acks_key(reload_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(acks, ack)
            pipe.expire(acks, ACKS_TTL_SEC)
            pipe.execute()


def _file_config(path: Path) -> Config | None:
    try:
        return validate_config_data(read_raw_data(path), str(path))
    except (ConfigError, OSError):
        return None


def _writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK) and os.access(path.parent, os.W_OK)
