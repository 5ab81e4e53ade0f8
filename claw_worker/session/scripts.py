"""Lua scripts of the session mailbox. Each touches the keys of one session (one hash slot),
or only global keys, so they run unchanged on Redis Cluster; the one exception is ENQUEUE,
which also writes the global keys of a message (its id index, the dirty mark, the run record
and index) and pushes onto the Celery queue list (Celery's Redis transport is not
Cluster-aware anyway)."""

# KEYS: msgrec, mailbox, latest run, drain-queued mark, Celery queue list, message index,
#       dirty sessions, run record, runs index
# ARGV: payload, now, ttl_sec, channel, chat_id, run_id, run_ttl_sec, drain message (the
# Celery message of drain(session), session/wakeup.py), mark ttl_sec, session_key,
# message_id, the runs index's trim stop (-(run_max) - 1)
# Stores the message, its queued run, and wakes the session in one atomic call: the drain
# task is pushed onto the queue unless one is already queued for the session (the mark,
# which the drain clears when it starts). Returns {1, run_id} when stored, {0, the stored
# message's run_id or ''} when this message_id was already stored (dedupe: nothing written).
ENQUEUE = """
local run = redis.call('HGET', KEYS[1], 'run_id')
if run then return {0, run} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[2], 'attempts', 0,
           'channel', ARGV[4], 'chat_id', ARGV[5], 'run_id', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[7])
redis.call('SET', KEYS[6], ARGV[10], 'EX', ARGV[3])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[10])
redis.call('HSET', KEYS[8], 'run_id', ARGV[6], 'session_key', ARGV[10],
           'message_id', ARGV[11], 'status', 'queued', 'queued_at', ARGV[2])
redis.call('EXPIRE', KEYS[8], ARGV[7])
redis.call('ZADD', KEYS[9], ARGV[2], ARGV[6])
redis.call('ZREMRANGEBYRANK', KEYS[9], 0, ARGV[12])
if redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[9]) then
  redis.call('LPUSH', KEYS[5], ARGV[8])
end
return {1, ARGV[6]}
"""

# KEYS: lease, inflight, mailbox   ARGV: token
# Returns {} when empty, {-1} when the lease is not ours, {1, item} for an item left in
# flight by a crashed holder (processed again first, to keep order), {0, item} for a new one.
TAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local item = redis.call('LINDEX', KEYS[2], 0)
if item then return {1, item} end
item = redis.call('LMOVE', KEYS[3], KEYS[2], 'LEFT', 'RIGHT')
if item then return {0, item} end
return {}
"""

# KEYS: lease, inflight, dead letters, msgrec (of the id the entry names, if any)
# ARGV: token, the entry, ttl_sec, how many kept, now, error
# Moves an in-flight entry no worker can read to the session's dead letters, and fails its
# message's record if it has one (else it would read "queued" for good); -1 when the lease
# was lost.
SET_ASIDE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('LREM', KEYS[2], 1, ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'status', 'failed', 'finished_at', ARGV[5], 'error', ARGV[6])
end
return 1
"""

# KEYS: lease, inflight, msgrec   ARGV: token, status, reply, now, error
# Finishes the in-flight message; -1 when the lease was lost (another holder finishes it).
COMPLETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[3], 'status', ARGV[2], 'reply', ARGV[3], 'finished_at', ARGV[4],
           'error', ARGV[5])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: lease   ARGV: token, ttl_ms
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease, mailbox, inflight   ARGV: token
# Drops the lease (when ours) and returns how many messages still wait, so the caller
# sends another drain for them: nothing enqueued meanwhile is left without a drain.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
"""

# KEYS: lease, mailbox, inflight   -> {lease held (0/1), waiting count}
PROBE = """
return {redis.call('EXISTS', KEYS[1]),
        redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])}
"""

# KEYS: dirty   ARGV: session_key, score seen by the sweeper
# Forget a clean session only if nothing was enqueued since the sweeper looked (the score
# is the time of the last enqueue).
FORGET_IF_UNCHANGED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: sent mark, outbound stream   ARGV: payload, mark ttl_sec, stream maxlen
# Publishes a reply once per message_id, however many times its run is repeated.
PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[1])
  return 1
end
return 0
"""
