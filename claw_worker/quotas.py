"""Resource quotas per session and per sender (the ``quotas`` config section, QuotasConfig).

- **Message size** (``quotas.max_message_chars``): the ingress answers a longer message with
  413 (APIs) or a short reply (chats, claw_ingress/inbox.py); the runner fails one that came
  another way (cron, a pipeline) with a reply saying so (session/runner.py).
- **Tokens per UTC day** (``tokens_per_day_per_session``, ``tokens_per_day_per_sender``):
  :class:`TokenBudget`. Every LLM call of the agent loop, and the summary call of context
  compaction (agent/compaction.py; the Responses API's native compact call reports no
  usage, so it is not counted), adds its usage with INCRBY (atomic across workers) to a
  counter per session and per sender and day; before each call the
  loop asks :meth:`TokenBudget.refusal`, so an exhausted budget makes no call at all and a
  run under way stops at its next call, answering when the budget resets. Each call asks
  for no more output tokens than the budget has left (:meth:`TokenBudget.cap`), so only its
  prompt can overshoot: its cost is known only once it is answered.
- **Runs at once per sender** (``max_runs_per_sender``): :class:`SenderRuns`, a HASH of the
  sender's running sessions. A message over it is deferred (still queued, its session
  waiting behind it) and tried again after ``sender_busy_retry_sec``, so one sender cannot
  take every worker slot of the fleet while other senders' messages run. The waiting
  messages stand in line: none is overtaken by one that began waiting later, so a session
  with many messages queued cannot keep the sender's slot from its other sessions.
- **Tool iterations per run**: ``agents.defaults.max_tool_iterations`` (agent/loop.py); the
  reply then says the limit was reached.

Exempt from the token budgets and the runs at once: the CLI (channel ``cli``) and
gateway.admins (as ``commands.is_admin`` vouches for them). A user's message has a sender
here; so do the sub-agents and pipeline tasks its run starts (and theirs in turn, and a
sub-agent's report to its parent): their messages carry that user's ``channel:sender_id``
in ``metadata.sender`` (:func:`billed_sender`; work/spawn.py, the pipeline's
``creator.sender``), so their tokens count toward that user's daily budget as well as
their own session's, and spawning cannot launder a sender's budget. One the fleet makes
itself (cron, heartbeat, autonomy, and the work those start), one from an exempt run, or
one without a sender_id counts toward its session only; those are bounded by their own
settings (cron.max_jobs, work.max_spawn_per_session, work.max_active_pipelines), and a
shared pseudo-sender ("cron", "pipeline") must not cap them fleet-wide. Runs at once per
sender count a user's own messages only (:func:`sender_of`): a sub-agent never waits for
the run that started it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
import structlog

from claw_worker import constants as k
from claw_worker.commands.registry import is_admin
from claw_worker.config.schema import Config
from claw_worker.contract import CARRIED_ORIGINS, InboundMessage, Origin

log = structlog.get_logger(__name__)

CLI_CHANNEL = "cli"  # clawctl agent: run by whoever holds the config and Redis
DAY_SEC = 86400
RUNS_TTL_MS = DAY_SEC * 1000  # a sender's runs HASH, idle this long, goes away


SENDER_META = "sender"  # metadata: the person a sub-agent's / pipeline task's run costs


def sender_of(message: InboundMessage) -> str | None:
    """``<channel>:<sender_id>`` of a user's message, else None (the fleet's own messages)."""
    if not message.sender_id or message.origin is not Origin.USER:
        return None
    return f"{message.channel}:{message.sender_id}"


def billed_sender(message: InboundMessage) -> str | None:
    """The sender whose daily token budget ``message``'s run is charged to: a user's own
    message's sender, or the one a sub-agent's or pipeline task's message carries from the
    user's run that started it (``metadata.sender``; only the worker sets metadata). None for
    cron, heartbeat and autonomy messages."""
    if message.origin in CARRIED_ORIGINS:
        carried = message.metadata.get(SENDER_META)
        return carried if isinstance(carried, str) and carried else None
    return sender_of(message)


def exempt(config: Config, message: InboundMessage) -> bool:
    return message.channel == CLI_CHANNEL or is_admin(config, message.channel, message.sender_id)


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")


def next_reset(now: float) -> float:
    """The next 00:00 UTC after ``now`` (epoch seconds)."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp()


def reset_text(now: float) -> str:
    left = max(0, int(next_reset(now) - now))
    hours, minutes = divmod((left + 59) // 60, 60)
    return f"in {hours} h {minutes} min" if hours else f"in {minutes} min"


def tokens_of(usage: dict[str, int]) -> int:
    """The tokens one LLM call used: total_tokens, else input + output."""
    total = usage.get("total_tokens")
    if total is None:
        total = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return max(0, int(total))


class TokenBudget:
    """One run's view of its session's and sender's daily token counters."""

    def __init__(
        self,
        client: redis.Redis,
        config: Config,
        message: InboundMessage,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.texts = config.agents.defaults.texts
        self.clock = clock
        self.session_key = message.session_key
        self.sender = billed_sender(message)
        self.exempt = exempt(config, message)
        self._left: int | None = None  # tokens left of the tightest budget, at the last read
        quotas = config.quotas
        # (who, limit, key for a day): the budgets this run is held to, exempt: none.
        self._limits: list[tuple[str, int, Callable[[str], str]]] = []
        if not self.exempt:
            if quotas.tokens_per_day_per_session:
                self._limits.append(
                    ("this session", quotas.tokens_per_day_per_session, self._session_key)
                )
            if quotas.tokens_per_day_per_sender and self.sender is not None:
                self._limits.append(
                    ("this sender", quotas.tokens_per_day_per_sender, self._sender_key)
                )

    @property
    def carried_sender(self) -> str:
        """The sender the sub-agents and pipeline tasks this run starts are charged to: none
        from an exempt run (CLI, admins), whose work stays bounded by its session only."""
        return "" if self.exempt or self.sender is None else self.sender

    def _session_key(self, day: str) -> str:
        return k.session_tokens_key(self.session_key, day)

    def _sender_key(self, day: str) -> str:
        return k.sender_tokens_key(self.sender or "", day)

    def refusal(self) -> str | None:
        """The reply for a budget used up today, or None when the next LLM call may go (and
        :meth:`cap` then knows the tokens left)."""
        self._left = None
        if not self._limits:
            return None
        now = self.clock()
        day = utc_day(now)
        used = self.redis.mget([key(day) for _, _, key in self._limits])
        left = []
        for (who, limit, _), value in zip(self._limits, used, strict=True):
            spent = int(value or 0)
            if spent >= limit:
                return self.texts.token_budget_used_up % (who, limit, spent, reset_text(now))
            left.append(limit - spent)
        self._left = min(left)
        return None

    def cap(self, max_tokens: int) -> int:
        """The output tokens the next call may ask for: ``max_tokens``, or fewer when the
        budgets read by the last :meth:`refusal` have fewer left, so a call's answer cannot
        take a budget past its limit (its prompt still can: its size is known only once the
        call is answered)."""
        return max_tokens if self._left is None else max(1, min(max_tokens, self._left))

    def spend(self, usage: dict[str, int]) -> None:
        """Add one LLM call's tokens to today's counters (kept whether or not a limit is
        set, so a budget set in the middle of a day knows what was used)."""
        tokens = tokens_of(usage)
        if not tokens:
            return
        now = self.clock()
        day = utc_day(now)
        expire_at = int(next_reset(now)) + DAY_SEC  # readable for a day after its own
        keys = [self._session_key(day)]
        if self.sender is not None:
            keys.append(self._sender_key(day))
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.incrby(key, tokens)
                pipe.expireat(key, expire_at)
            pipe.execute()


# KEYS[1]: the sender's runs HASH (sender_runs_key); KEYS[2]: this run's session lease key;
# KEYS[3]: the sender's line, ZSET message record key -> its place, a number drawn from
# KEYS[6] (SENDER_LINE_SEQ) at its first refusal (sender_line_key); KEYS[4]: HASH message
# record key -> last try, ms (sender_line_seen_key); KEYS[5]: this message's record key.
# ARGV[1]: this run's lease token; ARGV[2]: runs at once allowed; ARGV[3]: the keys' TTL
# (ms); ARGV[4]: ms after its last try that a message in line stops holding its place.
# Returns {1} when the run may go (it is in the runs HASH, out of the line), else {0, runs
# going on, messages in line before this one} (it is in line, keeping its first place).
# A run may go while the runs going on and the live messages in line before it are fewer
# than allowed: a message that began waiting earlier is never overtaken, so the sender's
# sessions take turns (a session with more messages queued cannot keep the slot).
# Entries whose lease key no longer holds their token (a run whose worker died before it
# released) are dropped first; so is a message in line that is no longer queued or running
# (done, cancelled, expired) or has not tried for ARGV[4] ms (its worker died and it was not
# retried: it starts again at the end of the line if it comes back). Those lease and record
# keys are read by the names the HASH and the ZSET keep, not passed in KEYS, so this script
# needs one Redis (not Cluster), as the fleet runs today. Time is Redis's.
ACQUIRE_RUN = """
local runs = redis.call('HGETALL', KEYS[1])
for i = 1, #runs, 2 do
  if runs[i] ~= KEYS[2] and redis.call('GET', runs[i]) ~= runs[i + 1] then
    redis.call('HDEL', KEYS[1], runs[i])
  end
end
if redis.call('HEXISTS', KEYS[1], KEYS[2]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = now - tonumber(ARGV[4])
  local mine = redis.call('ZSCORE', KEYS[3], KEYS[5])
  local ahead = 0
  local line = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #line, 2 do
    local other = line[i]
    if other ~= KEYS[5] then
      local status = redis.call('HGET', other, 'status')
      local seen = tonumber(redis.call('HGET', KEYS[4], other) or '0')
      if (status ~= 'queued' and status ~= 'running') or seen < cutoff then
        redis.call('ZREM', KEYS[3], other)
        redis.call('HDEL', KEYS[4], other)
      elseif not mine or tonumber(line[i + 1]) < tonumber(mine) then
        ahead = ahead + 1
      end
    end
  end
  local going = redis.call('HLEN', KEYS[1])
  if going + ahead >= tonumber(ARGV[2]) then
    if not mine then
      redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[6]), KEYS[5])
    end
    redis.call('HSET', KEYS[4], KEYS[5], now)
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    redis.call('PEXPIRE', KEYS[4], ARGV[3])
    return {0, going, ahead}
  end
  redis.call('ZREM', KEYS[3], KEYS[5])
  redis.call('HDEL', KEYS[4], KEYS[5])
end
redis.call('HSET', KEYS[1], KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1}
"""

# KEYS[1]: the sender's runs HASH; KEYS[2]: the session lease key   ARGV[1]: the lease token
# Removes the run only if it is still this lease's (returns 1 then).
RELEASE_RUN = """
if redis.call('HGET', KEYS[1], KEYS[2]) == ARGV[1] then
  return redis.call('HDEL', KEYS[1], KEYS[2])
end
return 0
"""


@dataclass(frozen=True)
class SenderBusy:
    """Why a sender's message waits: its runs going on, and its messages in line before it."""

    going: int
    ahead: int


class SenderRuns:
    """The runs of each sender going on across the fleet, one per session, and the line of
    its messages waiting for one (first come, first served)."""

    def __init__(self, client: redis.Redis) -> None:
        self._acquire = client.register_script(ACQUIRE_RUN)
        self._release = client.register_script(RELEASE_RUN)

    def limited(self, config: Config, message: InboundMessage) -> bool:
        """Whether ``message``'s run counts toward its sender's max_runs_per_sender."""
        return bool(
            config.quotas.max_runs_per_sender
            and sender_of(message) is not None
            and not exempt(config, message)
        )

    def acquire(
        self, config: Config, message: InboundMessage, token: str, *, stale_sec: float
    ) -> SenderBusy | None:
        """None when the run may start (and is counted), else why it waits: it is then in
        the sender's line, where it keeps its place while it tries again at least every
        ``stale_sec``."""
        sender = sender_of(message) or ""
        keys = [
            k.sender_runs_key(sender), k.lease_key(message.session_key),
            k.sender_line_key(sender), k.sender_line_seen_key(sender),
            k.message_key(message.session_key, message.message_id), k.SENDER_LINE_SEQ,
        ]  # fmt: skip
        args = [token, config.quotas.max_runs_per_sender, RUNS_TTL_MS, int(stale_sec * 1000)]
        granted, *busy = self._acquire(keys=keys, args=args)
        return None if granted else SenderBusy(int(busy[0]), int(busy[1]))

    def release(self, message: InboundMessage, token: str) -> None:
        keys = [k.sender_runs_key(sender_of(message) or ""), k.lease_key(message.session_key)]
        try:
            self._release(keys=keys, args=[token])
        except redis.RedisError as exc:  # the entry goes stale with its lease: not lost
            log.warning("sender run release failed", session_key=message.session_key,
                        error=str(exc))  # fmt: skip
