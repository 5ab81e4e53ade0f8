"""Every Redis key, queue name and task name clawfleet uses, in one place.

Keys that belong to one session carry the session key as a hash tag (``{...}``) so every
key of a session lands in one Redis Cluster slot and one Lua script may touch them all.
"""

from __future__ import annotations

PREFIX = "claw"

# Task names travel on the wire and show in Flower: keep them stable.
TASK_DRAIN = "claw.session.drain"
TASK_SWEEP = "claw.session.sweep"
TASK_PING = "claw.health.ping"
TASK_CRON_FIRE = "claw.cron.fire"  # a cron job's time came: put its message in its session
TASK_HEARTBEAT = "claw.heartbeat.tick"
TASK_SENTINEL = "claw.sentinel.check"
TASK_AUTONOMY = "claw.autonomy.tick"
TASK_SELFCHECK = "claw.selfcheck.run"  # once per gateway start
TASK_RUNS_CLEANUP = "claw.runs.cleanup"
TASK_WORK_RECONCILE = "claw.work.reconcile"  # pipeline tasks, sub-agents: worker died unreported

# Queues: workers choose with -Q.
QUEUE_SESSIONS = "sessions"
QUEUE_TOOLS = "tools"
QUEUE_CRON = "cron"
QUEUE_HEALTH = "health"
ALL_QUEUES = (QUEUE_SESSIONS, QUEUE_TOOLS, QUEUE_CRON, QUEUE_HEALTH)

# Global (cross-session) keys.
DIRTY_SESSIONS = f"{PREFIX}:sessions:dirty"  # ZSET session_key -> last enqueue/dispatch time
OUTBOUND_STREAM = f"{PREFIX}:{{outbound}}:stream"  # STREAM of replies for the ingress
OUTBOUND_MAXLEN = 100_000  # approximate cap on the stream (XADD MAXLEN ~)
CONTROL_CHANNEL = f"{PREFIX}:control"  # PUB/SUB for cancel and reload broadcasts


def _tag(session_key: str) -> str:
    return "{" + session_key + "}"


def mailbox_key(session_key: str) -> str:
    """LIST of serialized InboundMessage waiting for the session (RPUSH tail, LMOVE head)."""
    return f"{PREFIX}:mbox:{_tag(session_key)}"


def inflight_key(session_key: str) -> str:
    """LIST holding at most the one message the lease holder is processing."""
    return f"{PREFIX}:inflight:{_tag(session_key)}"


def lease_key(session_key: str) -> str:
    """STRING token of the worker that owns the session right now (SET NX PX)."""
    return f"{PREFIX}:lease:{_tag(session_key)}"


def drain_queued_key(session_key: str) -> str:
    """STRING mark: a drain task for the session is on the queue (set by the enqueue script
    when it pushes one, cleared by the drain when it starts; TTL as a backstop)."""
    return f"{PREFIX}:drainq:{_tag(session_key)}"


def history_key(session_key: str) -> str:
    """LIST of JSON chat messages (the conversation history of the session)."""
    return f"{PREFIX}:history:{_tag(session_key)}"


def history_saved_key(session_key: str, message_id: str) -> str:
    """STRING mark: this message's turn is in the history (a re-run does not save it twice)."""
    return f"{PREFIX}:histsaved:{_tag(session_key)}:{message_id}"


def dead_letter_key(session_key: str) -> str:
    """LIST of mailbox entries no worker could read as a message (corrupt, or stored by a
    newer version), set aside so the session goes on; expires like a message record."""
    return f"{PREFIX}:dead:{_tag(session_key)}"


def cancel_key(session_key: str) -> str:
    return f"{PREFIX}:cancel:{_tag(session_key)}"


def message_key(session_key: str, message_id: str) -> str:
    """HASH with status, reply, attempts and timestamps of one message (in its session slot)."""
    return f"{PREFIX}:msg:{_tag(session_key)}:{message_id}"


def message_index_key(message_id: str) -> str:
    """STRING session_key of a message, so the API can find a message by its id alone."""
    return f"{PREFIX}:msgidx:{message_id}"


def reply_sent_key(message_id: str) -> str:
    """Outbound dedupe mark: a reply for this message_id was already published.

    Tagged with the outbound stream's slot so one script can check it and XADD together.
    """
    return f"{PREFIX}:sent:{{outbound}}:{message_id}"


# Celery beat's schedule on RedBeat: entries are <prefix><name>; RedBeat adds
# <prefix>:schedule (ZSET of due times) and <prefix>:statics (SET of static entry names).
BEAT_KEY_PREFIX = f"{PREFIX}:beat:"
BEAT_LOCK_KEY = f"{BEAT_KEY_PREFIX}:lock"  # STRING token of the one active beat (TTL)

# The fleet's processes, for config reload (claw_worker/control.py, config/reload.py).
PROCS = f"{PREFIX}:procs"  # HASH process key -> JSON {role, name, host, pid, config}
PROCS_SEEN = f"{PREFIX}:procs:seen"  # ZSET process key -> time of its last heartbeat
RELOAD_LOCK = f"{PREFIX}:reload:lock"  # STRING token of the one reload under way


def reload_acks_key(reload_id: str) -> str:
    """LIST of JSON answers of the processes to one reload (prepare and commit)."""
    return f"{PREFIX}:reload:{reload_id}:acks"


# Runs: one record per processed message (status, timings, tokens), kept for
# run_state_ttl_seconds and at most run_state_max of them.
RUNS_INDEX = f"{PREFIX}:runs"  # ZSET run_id -> start time
RUN_SEQ = f"{PREFIX}:runs:seq"  # INCR counter, the <n> of run ids


def run_key(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def latest_run_key(session_key: str) -> str:
    return f"{PREFIX}:runs:latest:{_tag(session_key)}"


def lang_key(session_key: str) -> str:
    return f"{PREFIX}:lang:{_tag(session_key)}"


# Circuit breakers of LLM proxies, shared by every worker host (providers/breaker.py).
BREAKER_PREFIX = f"{PREFIX}:breaker:"


def breaker_key(proxy_name: str) -> str:
    """HASH failures (consecutive count) and open_until (epoch seconds) of one proxy."""
    return f"{BREAKER_PREFIX}{proxy_name}"


# -- channels (claw_ingress/channels/, claw_ingress/delivery.py, claw_ingress/access.py) -----

# The ingress replicas read the outbound stream as one consumer group: each entry is sent
# by one replica, and acknowledged once the platform accepted it.
OUTBOUND_GROUP = "delivery"
# STRING the ingress replica that delivers the outbound stream now (a lease with a TTL): one
# reader keeps each chat's messages in order.
DELIVERY_LEADER = f"{PREFIX}:delivery:leader"


def delivered_key(message_id: str) -> str:
    """HASH parts (sent so far) and done (1 once every part went out) of one outbound
    message: a redelivered entry resumes after its last sent part, never sends one twice."""
    return f"{PREFIX}:delivered:{{outbound}}:{message_id}"


def replica_inbox_key(replica: str) -> str:
    """STREAM of outbound messages for one ingress replica: replies for a connection only
    it holds (a WebSocket, a MaixCam device) are forwarded here by whichever replica read
    them from the outbound stream."""
    return f"{PREFIX}:{{outbound}}:replica:{replica}"


def connection_key(channel: str, chat_id: str) -> str:
    """STRING replica that holds the live connection of a chat (TTL, renewed while open)."""
    return f"{PREFIX}:conn:{channel}:{chat_id}"


def allowed_senders_key(channel: str) -> str:
    """SET of sender ids an operator approved for a channel (dm_policy pairing)."""
    return f"{PREFIX}:allowed:{channel}"


PAIRING_CODES = f"{PREFIX}:pairing:codes"  # HASH code -> JSON {channel, sender_id, chat_id, ...}


def pairing_sender_key(channel: str, sender_id: str) -> str:
    """STRING the pending code of one sender (TTL), so a sender gets one code at a time."""
    return f"{PREFIX}:pairing:sender:{channel}:{sender_id}"


def platform_event_key(channel: str, event_id: str) -> str:
    """STRING mark: a platform's event or message was taken in (TTL). Platforms retry a
    webhook they think failed; the mark makes the retry a no-op."""
    return f"{PREFIX}:seen:{channel}:{event_id}"


def rate_bucket_key(kind: str, subject: str) -> str:
    """HASH {tokens, at_ms}: one token bucket of the ingress's rate limits
    (claw_ingress/ratelimit.py); kind "ip" (a client address) or "sender"
    ("<channel>:<sender_id>"). TTL: the time the bucket takes to fill up again."""
    return f"{PREFIX}:rate:{kind}:{subject}"


def rate_notice_key(sender: str) -> str:
    """STRING mark: this sender was told to slow down (TTL one minute: one notice a minute)."""
    return f"{PREFIX}:rate:notice:{sender}"


def channel_state_key(channel: str, kind: str, ref: str) -> str:
    """What an adapter keeps between messages, with a TTL: DingTalk's conversation and its
    session webhook (kind "conv"), QQ's message to answer and its sequence ("reply",
    "seq"). In Redis so any ingress replica can answer."""
    return f"{PREFIX}:chan:{channel}:{kind}:{ref}"


# -- time-driven work (beat_schedules/) --------------------------------------------------------

CRON_JOBS = f"{PREFIX}:cron:jobs"  # HASH job id -> JSON job (beat_schedules/cron.py)
CRON_SESSION_PREFIX = "cron:"  # a cron job's session: cron:<id> (callers cannot name one)
CRON_ENTRY_PREFIX = "cron:"  # RedBeat entry name of a job: cron:<id> (key claw:beat:cron:<id>)
LAST_ACTIVE = f"{PREFIX}:last_active"  # STRING JSON {channel, chat_id, at}: the last user chat
HEARTBEAT_STATE = f"{PREFIX}:heartbeat"  # HASH last tick, what it did
SENTINEL_REPORT = f"{PREFIX}:sentinel:report"  # STRING JSON: the last Sentinel report


def sentinel_alert_key(check: str) -> str:
    """STRING mark: this alert was sent (TTL = the quiet period): not repeated until then."""
    return f"{PREFIX}:sentinel:alert:{check}"


AUTONOMY = f"{PREFIX}:autonomy"  # HASH the autonomous mode's state (beat_schedules/autonomy.py)
SELFCHECK_DONE = f"{PREFIX}:selfcheck:done"  # STRING mark: this start's self-check was sent
SELFCHECK_STATE = f"{PREFIX}:selfcheck"  # HASH what the last self-check found and did
# RedBeat's ZSET entry key -> due time (epoch s; -1: not due again), read by beat each tick;
# a cron job's next run is its entry's score here (beat_schedules/cron_jobs.py).
BEAT_SCHEDULE = f"{BEAT_KEY_PREFIX}:schedule"


# -- nodes: remote devices (claw_ingress/nodes.py, claw_worker/nodes/, claw_node/) ------------
# The registry, written by the ingress (POST /nodes/register, /nodes/heartbeat) and read by
# the workers; one hash tag, so the register script touches one Cluster slot. Times are the
# Redis server's (TIME), so the hosts' clocks need not agree.
NODES = f"{PREFIX}:{{nodes}}"  # HASH node id -> JSON {id, name, url, capabilities, token, ttl_sec, registered_at}
NODES_SEEN = f"{PREFIX}:{{nodes}}:seen"  # ZSET node id -> last register/heartbeat (Redis time)
NODES_STATUS = f"{PREFIX}:{{nodes}}:status"  # HASH node id -> the status its last heartbeat gave
NODES_STATS = f"{PREFIX}:nodes:stats"  # HASH total, ok, fail, ms, action:<name> of dispatches


def node_connection_key(node_id: str) -> str:
    """STRING ingress replica holding the node's relay WebSocket (TTL, renewed while open)."""
    return connection_key("nodes", node_id)


def node_relay_key(replica: str) -> str:
    """LIST of JSON relay requests for the nodes connected to one ingress replica."""
    return f"{PREFIX}:nodes:relay:{replica}"


def node_request_key(request_id: str) -> str:
    """STRING mark: a worker still waits for this relay request (PX = its deadline)."""
    return f"{PREFIX}:nodes:req:{request_id}"


def node_reply_key(request_id: str) -> str:
    """LIST the relay's one answer (the envelope JSON) to a request (short TTL)."""
    return f"{PREFIX}:nodes:reply:{request_id}"


# -- resource-key locks (claw_worker/work/locks.py) --------------------------------------------
# Every lock key carries the hash tag {locks}: the one script that takes all of a task's keys
# at once touches a single Redis Cluster slot. A waiter is the message id of a task that was
# refused; its place in line is the sequence number of its first refusal.
LOCK_SEQ = f"{PREFIX}:{{locks}}:seq"  # INCR counter: the order of first refusals
LOCK_ORDER = f"{PREFIX}:{{locks}}:order"  # ZSET waiter -> sequence of its first refusal
LOCK_SEEN = f"{PREFIX}:{{locks}}:seen"  # ZSET waiter -> its last try (ms, Redis time)
LOCK_SINCE = f"{PREFIX}:{{locks}}:since"  # HASH waiter -> its first refusal (ms)


def resource_lock_key(resource: str) -> str:
    """STRING token of the task holding a resource key (``repo:x``), with a TTL."""
    return f"{PREFIX}:{{locks}}:held:{resource}"


def resource_waiters_key(resource: str) -> str:
    """ZSET waiter -> sequence: the tasks waiting for a resource key (expires when idle)."""
    return f"{PREFIX}:{{locks}}:wait:{resource}"


# -- pipelines and sub-agents (claw_worker/work/pipelines.py, spawn.py) ------------------------
PIPELINES = f"{PREFIX}:pipelines"  # ZSET pipeline id -> created at (all kept ones)
PIPELINES_ACTIVE = f"{PREFIX}:pipelines:active"  # ZSET pipeline id -> created at (unfinished)


def pipeline_key(pipeline_id: str) -> str:
    """STRING JSON of one pipeline: its tasks, their states and results, its shared_state
    (changed only in WATCH/MULTI transactions; expires work.pipeline_ttl_sec after a change)."""
    return f"{PREFIX}:pipeline:{pipeline_id}"


def pipelines_owned_key(owner: str) -> str:
    """ZSET pipeline id -> created at: the unfinished pipelines of one owner (a person's
    ``channel:sender_id``, or a session for the fleet's own work; ``Pipeline.owner``)."""
    return f"{PREFIX}:pipelines:owned:{_tag(owner)}"


def pipelines_made_for_key(viewer: str) -> str:
    """ZSET pipeline id -> created at: the kept pipelines made in a session
    (``session:<key>``) or for a chat (``chat:<channel>:<chat_id>``), what ``/pipeline list``
    shows them (work/pipelines.py ``viewers``)."""
    return f"{PREFIX}:pipelines:for:{_tag(viewer)}"


def latest_pipeline_key(session_key: str) -> str:
    """STRING id of the pipeline a session made last (the tools' default pipeline)."""
    return f"{PREFIX}:pipelines:latest:{_tag(session_key)}"


def spawn_key(session_key: str) -> str:
    """HASH a sub-agent's session: its parent, depth, role, pipeline task, status, result."""
    return f"{PREFIX}:spawn:{_tag(session_key)}"


SPAWN_PARENTS = (
    f"{PREFIX}:spawn:parents"  # ZSET parent session -> last spawn: may have some running
)


def spawn_active_key(parent_session: str) -> str:
    """ZSET sub-agent session -> started at: the parent's sub-agents still running."""
    return f"{PREFIX}:spawn:active:{_tag(parent_session)}"


def spawn_seq_key(parent_session: str) -> str:
    """STRING INCR counter: the <n> of the parent's sub-agent sessions spawn:<parent>:<n>."""
    return f"{PREFIX}:spawn:seq:{_tag(parent_session)}"


# -- quotas (claw_worker/quotas.py) ----------------------------------------------------------
# A sender is "<channel>:<sender_id>"; days are UTC dates (YYYYMMDD). Token counters expire a
# day after their day ends.


def session_tokens_key(session_key: str, day: str) -> str:
    """STRING INCRBY counter: LLM tokens a session used on a UTC day."""
    return f"{PREFIX}:quota:tokens:{_tag(session_key)}:{day}"


def sender_tokens_key(sender: str, day: str) -> str:
    """STRING INCRBY counter: LLM tokens a sender used on a UTC day, in all its sessions."""
    return f"{PREFIX}:quota:tokens:sender:{sender}:{day}"


def sender_runs_key(sender: str) -> str:
    """HASH session lease key -> lease token: the sender's runs going on now, one per
    session; an entry whose lease key no longer holds that token (its worker died) is stale."""
    return f"{PREFIX}:quota:runs:{sender}"


def sender_line_key(sender: str) -> str:
    """ZSET message record key -> its place (drawn from SENDER_LINE_SEQ when it was first
    refused): the sender's messages waiting for a run slot, first come first served."""
    return f"{PREFIX}:quota:line:{sender}"


# STRING INCR counter: the places in the senders' lines (unique, so two messages refused in
# the same millisecond still have an order).
SENDER_LINE_SEQ = f"{PREFIX}:quota:line-seq"


def sender_line_seen_key(sender: str) -> str:
    """HASH message record key -> its last try (ms): a message in the sender's line that
    stops trying loses its place."""
    return f"{PREFIX}:quota:line-seen:{sender}"
