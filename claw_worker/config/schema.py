"""The config model tree: one strict pydantic model per section.

Strict means: unknown fields are errors, and values are not coerced across types (a string
is not silently read as a number). Every field has a default, so ``{}`` is a valid config.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from claw_worker.config.channels import ChannelsConfig
from claw_worker.config.fields import (
    MAX_PERIOD_SEC,
    MAX_PROSE_CHARS,
    MAX_REQUEST_SEC,
    Name,
    Names,
    Section,
    check_url,
    secret,
)
from claw_worker.config.gateway import GatewayConfig, RateLimitConfig
from claw_worker.config.quotas import QuotasConfig
from claw_worker.config.texts import TextsConfig
from claw_worker.config.tools import (
    ExecToolConfig,
    SkillsConfig,
    ToolsConfig,
    WebFetchConfig,
    WebSearchConfig,
)

# Sections defined in their own modules, importable from here as before.
__all__ = [
    "ExecToolConfig",
    "GatewayConfig",
    "RateLimitConfig",
    "Section",
    "SkillsConfig",
    "TextsConfig",
    "ToolsConfig",
    "WebFetchConfig",
    "WebSearchConfig",
]


class HeartbeatConfig(Section):
    """The periodic look at HEARTBEAT.md (beat_schedules/heartbeat.py)."""

    enabled: bool = True
    every_sec: int = Field(1800, ge=2, le=MAX_PERIOD_SEC)
    ack_max_chars: int = Field(64, ge=0)  # replies this short (or HEARTBEAT_OK) are not sent
    prompt_template: str = Field(
        "Read HEARTBEAT.md if it exists (workspace context). Follow it strictly. Do not infer "
        "or repeat old tasks from prior chats. If nothing needs attention, reply HEARTBEAT_OK.",
        min_length=1,
        max_length=MAX_PROSE_CHARS,
    )
    # Where other replies go: both empty means the chat whose user wrote last.
    target_channel: str = Field("", max_length=64)
    target_chat_id: str = Field("", max_length=256)

    @model_validator(mode="after")
    def _check_target(self) -> HeartbeatConfig:
        if bool(self.target_channel) != bool(self.target_chat_id):
            raise ValueError(
                "set both target_channel and target_chat_id, or neither (the last active "
                "chat), in one command: clawctl config set agents.defaults.heartbeat."
                "target_channel telegram agents.defaults.heartbeat.target_chat_id 123456789"
            )
        known = sorted({*ChannelsConfig.model_fields, "ws"})
        if self.target_channel and self.target_channel not in known:
            raise ValueError(
                f"target_channel must be a channel that can receive messages: {', '.join(known)}"
            )
        return self


class ContextCompactionConfig(Section):
    enabled: bool = True
    mode: Literal["summary", "responses_compact", "hybrid"] = "summary"
    trigger_messages: int = Field(60, ge=4)
    keep_recent_messages: int = Field(20, ge=1)
    max_summary_chars: int = Field(6000, ge=100)
    max_transcript_chars: int = Field(20000, ge=1000)


class RuntimeControlConfig(Section):
    intent_max_input_chars: int = Field(1200, ge=1)
    autonomy_tick_interval_sec: int = Field(20, ge=1, le=MAX_PERIOD_SEC)
    autonomy_min_run_interval_sec: int = Field(20, ge=1, le=MAX_PERIOD_SEC)
    autonomy_idle_threshold_sec: int = Field(20, ge=1, le=MAX_PERIOD_SEC)
    autonomy_max_rounds_without_user: int = Field(120, ge=1)
    autonomy_max_pending_duration_sec: int = Field(180, ge=1, le=MAX_PERIOD_SEC)
    autonomy_max_consecutive_stalls: int = Field(3, ge=1)
    autolearn_max_rounds_without_user: int = Field(200, ge=1)
    run_state_ttl_seconds: int = Field(1800, ge=1, le=MAX_PERIOD_SEC)
    run_state_max: int = Field(500, ge=1)
    tool_parallel_safe_names: list[str] = [
        "read_file", "list_files", "find_files", "grep_files",
        "memory_search", "web_search", "web_fetch", "repo_map", "system_info",
    ]  # fmt: skip
    tool_max_parallel_calls: int = Field(2, ge=1)
    # Calls of one model answer that are run; the rest are answered "not run" (a runaway
    # answer of hundreds of calls, each result up to tools.max_output_chars, would flood
    # the next request). The model asks for them again after reading the first results.
    tool_max_calls_per_answer: int = Field(16, ge=1)


class MemoryConfig(Section):
    enabled: bool = True  # recall into the context on memory_recall_keywords
    recall_limit: int = Field(3, ge=1, le=20)  # passages added to the context
    recall_max_chars: int = Field(2000, ge=100)  # cap on the whole "Relevant memory" block
    # hybrid: bm25 fused with a local embedding model's ranking, for matches without shared
    # words; needs the embeddings extra (falls back to bm25 with a warning without it)
    search: Literal["bm25", "hybrid"] = "bm25"


class AgentDefaults(Section):
    workspace: str = ""  # empty: $CLAW_HOME/workspace
    model: Name = ""  # empty: the first of providers.proxy.models
    model_fallbacks: Names = []
    max_tokens: int = Field(4096, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tool_iterations: int = Field(20, ge=1, le=500)
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    texts: TextsConfig = TextsConfig()
    context_compaction: ContextCompactionConfig = ContextCompactionConfig()
    memory: MemoryConfig = MemoryConfig()
    runtime_control: RuntimeControlConfig = RuntimeControlConfig()


class AgentsConfig(Section):
    defaults: AgentDefaults = AgentDefaults()


class ProxyConfig(Section):
    api_base: str = ""
    api_key: str = secret("empty: $CLAW_API_KEY, else $OPENAI_API_KEY")
    auth: Literal["bearer", "api-key", "none"] = "bearer"
    timeout_sec: float = Field(120.0, gt=0, le=MAX_REQUEST_SEC)
    models: Names = []
    protocol: Literal["chat_completions", "responses", "anthropic"] = "chat_completions"
    supports_responses_compact: bool = False
    stream: bool = False  # ask for a streamed answer ("stream": true, SSE), any protocol

    @field_validator("api_base")
    @classmethod
    def _check_base(cls, value: str) -> str:
        return check_url(value)


class ProvidersConfig(Section):
    proxy: ProxyConfig = ProxyConfig()
    proxies: dict[str, ProxyConfig] = {}
    proxy_fallbacks: list[str] = []

    @model_validator(mode="after")
    def _check_fallbacks(self) -> ProvidersConfig:
        unknown = [name for name in self.proxy_fallbacks if name not in self.proxies]
        if unknown:
            raise ValueError(
                f"proxy_fallbacks names {', '.join(unknown)}, which is not in providers.proxies"
            )
        return self


class RedisConfig(Section):
    url: str = ""  # empty: the embedded redis-server under $CLAW_HOME/run

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url:
            return url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        parts = urlsplit(url)
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("url needs a socket path, e.g. unix:///run/redis/redis.sock")
        if parts.scheme != "unix":
            if not parts.hostname:
                raise ValueError("url needs a host, e.g. redis://127.0.0.1:6379/0")
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError("url has an invalid port") from None
        return url


class WorkerConfig(Section):
    pool: Literal["threads", "prefork", "solo"] = "threads"
    concurrency: int = Field(200, ge=1, le=5000)
    # Renewed while a session runs; a dead worker's sessions wait this long to be taken
    # over, so past a day it is a typo (and a huge one Redis refuses: "invalid expire time").
    lease_sec: int = Field(30, ge=2, le=86400)
    sweep_interval_sec: int = Field(15, ge=1, le=MAX_PERIOD_SEC)
    max_attempts: int = Field(3, ge=1, le=50)
    message_ttl_sec: int = Field(7 * 24 * 3600, ge=60, le=MAX_PERIOD_SEC)
    # A task refused its resource keys ([keys: ...], claw_worker/work/locks.py) waits in
    # resource_lock and tries again after this long; the keys' TTL is lease_sec.
    resource_lock_retry_sec: float = Field(30.0, gt=0, le=3600)
    # Each worker process serves Prometheus /metrics here (claw_worker/metrics.py); taken:
    # the next free port up to +31 (several workers on one host). 0: off. Unauthenticated,
    # so on loopback unless told otherwise.
    metrics_port: int = Field(9750, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9.:_-]{1,255}$")


class BeatConfig(Section):
    """Celery beat on RedBeat: the schedule lives in Redis, one beat holds the lock."""

    # A standby beat (on another host) takes over this long after the active one died.
    lock_timeout_sec: int = Field(30, ge=5, le=600)
    # How often beat reads due entries from Redis: bounds how late a cron job added at run
    # time fires.
    max_loop_interval_sec: float = Field(1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _check_lock(self) -> BeatConfig:
        if self.lock_timeout_sec < 3 * self.max_loop_interval_sec:
            raise ValueError(
                "lock_timeout_sec must be at least 3 x max_loop_interval_sec, or the active "
                "beat loses its lock between two renewals"
            )
        return self


class SentinelConfig(Section):
    """The fleet's health checker (beat_schedules/sentinel.py): what it checks against,
    whether it repairs, and where its alerts go."""

    enabled: bool = True
    interval_sec: int = Field(60, ge=5, le=MAX_PERIOD_SEC)
    auto_heal: bool = True
    # Alerts go to a channel name (telegram, discord, ..., "ws") and a chat there; without a
    # channel they are only logged.
    notify_channel: str = ""
    notify_chat_id: str = ""
    # The same check's alert is not repeated within this.
    alert_quiet_sec: int = Field(3600, ge=1, le=MAX_PERIOD_SEC)
    logs_max_mb: int = Field(500, ge=1)  # the logs directory; over it, rotated files are pruned
    min_free_mb: int = Field(1024, ge=0)  # free disk: warn below this, fail below half of it
    redis_latency_warn_ms: int = Field(200, ge=1)  # a PING round trip slower than this
    redis_memory_warn_pct: int = Field(80, ge=1, le=100)  # used_memory / maxmemory
    max_queue_depth: int = Field(1000, ge=1)  # tasks waiting on one queue
    # A run going on longer than this is reported.
    stuck_run_sec: int = Field(1800, ge=10, le=MAX_PERIOD_SEC)

    @model_validator(mode="after")
    def _check_notify(self) -> SentinelConfig:
        channels = ("ws", *ChannelsConfig.model_fields)
        if self.notify_channel and self.notify_channel not in channels:
            raise ValueError(
                f"notify_channel {self.notify_channel!r} is not a channel; use one of "
                + ", ".join(channels)
            )
        if self.notify_chat_id != self.notify_chat_id.strip():
            raise ValueError("notify_chat_id has spaces around it")
        if self.notify_channel and not self.notify_chat_id:
            raise ValueError(
                "notify_channel needs notify_chat_id, the chat the alerts go to (set "
                "sentinel.notify_chat_id first)"
            )
        return self


class LoggingConfig(Section):
    enabled: bool = True
    dir: str = ""  # empty: $CLAW_HOME/logs
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_size_mb: int = Field(20, ge=1)
    # Ten years at most: a larger one overflows the cutoff (time.time() - days * 86400).
    retention_days: int = Field(7, ge=1, le=3660)


class CronConfig(Section):
    """Cron jobs (``clawctl cron``, the agent's ``cron`` tool; beat_schedules/cron*.py)."""

    enabled: bool = True  # false: jobs stay scheduled but do not fire (marked skipped)
    max_jobs: int = Field(200, ge=1)
    max_agent_jobs: int = Field(20, ge=0)  # of them, made by the agent's cron tool
    # Cron expressions and --at times without an offset are wall times in this IANA zone
    # unless the job gives --tz.
    timezone: str = "UTC"
    # A failed run is retried after base * 2**(n-1) s (n: failures in a row), at most max;
    # after that many retries fail too, the job is disabled and an alert sent.
    retry_backoff_base_sec: int = Field(30, ge=1, le=MAX_PERIOD_SEC)
    retry_backoff_max_sec: int = Field(3600, ge=1, le=MAX_PERIOD_SEC)
    max_consecutive_failure_retries: int = Field(5, ge=0)

    @model_validator(mode="after")
    def _check(self) -> CronConfig:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            if self.timezone.upper() != "UTC":
                ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone {self.timezone!r} is not a time zone: use an IANA name such as "
                "Europe/Paris or UTC"
            ) from None
        if self.retry_backoff_max_sec < self.retry_backoff_base_sec:
            raise ValueError("retry_backoff_max_sec must be at least retry_backoff_base_sec")
        return self


class NodesConfig(Section):
    """Remote devices (SPEC "Nodes"): the registry the ingress keeps and the ``nodes`` tool's
    dispatches (claw_ingress/nodes.py, claw_worker/nodes/)."""

    timeout_sec: float = Field(30.0, gt=0, le=3600)  # one dispatch, unless the call says less
    max_timeout_sec: float = Field(600.0, gt=0, le=3600)  # what a call may ask for at most
    # p2p: how long connecting to a node's URL may take; mode auto then tries the relay.
    connect_timeout_sec: float = Field(3.0, gt=0, le=60)
    max_ttl_sec: int = Field(3600, ge=2, le=86400)  # the longest lease a node may register
    max_nodes: int = Field(1000, ge=1, le=100_000)  # registered at once (full: one offline goes)
    max_response_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # a node's answer, p2p

    @model_validator(mode="after")
    def _check(self) -> NodesConfig:
        if self.timeout_sec > self.max_timeout_sec:
            raise ValueError("timeout_sec must be at most max_timeout_sec")
        return self


class WorkConfig(Section):
    """Work spread over the fleet: pipelines of agent tasks and spawned sub-agents
    (claw_worker/work/). Depth counts nesting: a user's run is 0, a sub-agent or a pipeline
    task is one deeper than the run that started it."""

    max_depth: int = Field(2, ge=0, le=10)  # deeper spawns and pipeline_creates are refused
    max_spawn_per_session: int = Field(4, ge=0, le=100)  # sub-agents running at once, per parent
    # A sub-agent not heard from after this no longer counts toward max_spawn_per_session.
    spawn_timeout_sec: int = Field(3600, ge=60, le=7 * 86400)
    max_pipeline_tasks: int = Field(20, ge=1, le=100)
    max_active_pipelines: int = Field(50, ge=1, le=10_000)  # not yet finished, fleet-wide
    # Not yet finished, of one person (with their sub-agents' and tasks'), or for the fleet's
    # own work of one session: nobody can take the whole fleet's share for a week.
    max_active_pipelines_per_sender: int = Field(10, ge=1, le=10_000)
    max_result_chars: int = Field(4000, ge=100, le=100_000)  # a task's result, kept and passed on
    max_shared_state_chars: int = Field(16000, ge=100, le=1_000_000)  # a pipeline's shared_state
    # Kept this long after its last change.
    pipeline_ttl_sec: int = Field(7 * 86400, ge=3600, le=MAX_PERIOD_SEC)


class SecurityConfig(Section):
    """Output filtering (claw_worker/reply_filter.py, claw_worker/redact.py; docs/security.md)."""

    # Mask the shapes of secrets (API keys, tokens, JWTs, private keys, passwords, card
    # numbers passing the Luhn check) in what the agent sends to users: replies, message
    # tool posts, pipeline reports. Off: only the config's own secrets are masked there
    # (always). Logs are always filtered; the model's own context never is.
    redact_replies: bool = True


class Config(Section):
    agents: AgentsConfig = AgentsConfig()
    providers: ProvidersConfig = ProvidersConfig()
    channels: ChannelsConfig = ChannelsConfig()
    gateway: GatewayConfig = GatewayConfig()
    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()
    beat: BeatConfig = BeatConfig()
    sentinel: SentinelConfig = SentinelConfig()
    logging: LoggingConfig = LoggingConfig()
    tools: ToolsConfig = ToolsConfig()
    cron: CronConfig = CronConfig()
    nodes: NodesConfig = NodesConfig()
    work: WorkConfig = WorkConfig()
    skills: SkillsConfig = SkillsConfig()
    quotas: QuotasConfig = QuotasConfig()
    security: SecurityConfig = SecurityConfig()
