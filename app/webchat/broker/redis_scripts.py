"""Lua scripts of the Redis broker: each is one atomic round trip on one room's keys.

Scripts take the time from Redis (`TIME`), never from a node, so nodes with skewed clocks agree
on ids, timestamps and presence expiry. Payload formats are described in redis_codec.py.
"""

from __future__ import annotations

from typing import Final


def sharded(script: str) -> str:
    """The script for a Redis Cluster: SPUBLISH (Redis 7 sharded pub/sub) for PUBLISH, so a
    room's events go to its own shard only, not over the cluster bus to every node. Every
    channel a script publishes on carries its room's hash tag, as its keys do."""
    result = script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
    # A PUBLISH written another way would broadcast over the cluster bus, unseen by SSUBSCRIBE.
    assert "PUBLISH'" not in result.replace("'SPUBLISH'", ""), "write redis.call('PUBLISH', ...)"
    return result


def awaiting_replicas(script: str, replicas: int) -> str:
    """The PUBLISH script for `--redis-replicas-ack`: the channel payload says how many replicas
    the message waits for (`w`), so subscribers hold it until it is confirmed (redis_acks.py)."""
    marked = script.replace("event.i = id\n", f"event.i = id\nevent.w = {int(replicas)}\n")
    assert marked != script, "the PUBLISH script names the message id `event.i`"
    return marked


# KEYS[1] the room's stream; KEYS[2] the dedupe key, only when the draft has a nonce.
# ARGV: channel, history size, dedupe ms, room TTL ms, name, text, trace JSON or '', user (''
# in anonymous mode), [nonce].
# Returns {0, id} for an accepted message, {1, payload} for a duplicate: the original message.
# The stream id is the message id, and PUBLISH follows XADD inside one script, so publish
# order equals history order on every node. Every write sets its key's TTL: the stream lives
# the room TTL after its last message (nodes with members push it back, redis_keepalive.py),
# the dedupe key the dedupe window.
#
# A dedupe key holds the message's id, and a duplicate is answered with the stream entry. An
# entry that XADD is about to trim while its dedupe key still lives (a busy room turns its
# history over within the window) first has its message copied into that key, so the answer
# stays exact; only then does a dedupe key hold a whole message. Should both be gone anyway (a
# lowered --history-size trims more than KEEP_TRIMMED entries at once), the answer is built
# from the id, the name, the user, the nonce and the resent text.
KEEP_TRIMMED: Final = 1000

PUBLISH: Final = f"""
local stream, dedupe = KEYS[1], KEYS[2]
local size, dedupe_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local function message(id, fields)
  local event = {{k = 'm', i = id}}
  for i = 1, #fields, 2 do event[fields[i]] = fields[i + 1] end
  return event
end
if dedupe then
  local seen = redis.call('GET', dedupe)
  if seen then
    if string.sub(seen, 1, 1) == '{{' then return {{1, seen}} end
    local entry = redis.call('XRANGE', stream, seen, seen)[1]
    if entry then return {{1, cjson.encode(message(entry[1], entry[2]))}} end
    local event = {{k = 'm', i = seen, n = ARGV[5], t = ARGV[6], o = ARGV[9]}}
    if ARGV[8] ~= '' then event.u = ARGV[8] end
    return {{1, cjson.encode(event)}}
  end
end
local now = redis.call('TIME')
local over = redis.call('XLEN', stream) - size + 1
if over > 0 then
  local recent = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - dedupe_ms
  local prefix = string.sub(stream, 1, -2) .. 'n:'
  local doomed = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(over, {KEEP_TRIMMED}))
  for _, entry in ipairs(doomed) do
    if tonumber(string.match(entry[1], '^%d+')) >= recent then
      local event = message(entry[1], entry[2])
      if event.o then
        -- the key dedupe_key() names for Draft.sender (the name, or \\x1f and the user's
        -- sub): its length in code points, not bytes
        local sender = event.u and ('\\031' .. event.u) or event.n
        local _, length = string.gsub(sender, '[^\\128-\\191]', '')
        local key = prefix .. length .. ':' .. sender .. event.o
        if redis.call('GET', key) == entry[1] then
          redis.call('SET', key, cjson.encode(event), 'KEEPTTL')
        end
      end
    end
  end
end
local name, text, trace, user = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local fields = {{'n', name, 't', text}}
local event = {{k = 'm', n = name, t = text}}
if dedupe then
  fields[#fields + 1] = 'o'
  fields[#fields + 1] = ARGV[9]
  event.o = ARGV[9]
end
if user ~= '' then
  fields[#fields + 1] = 'u'
  fields[#fields + 1] = user
  event.u = user
end
if trace ~= '' then
  fields[#fields + 1] = 'x'
  fields[#fields + 1] = trace
  event.x = trace
end
local id = redis.call('XADD', stream, 'MAXLEN', size, '*', unpack(fields))
redis.call('PEXPIRE', stream, ARGV[4])
event.i = id
-- Acceptance time in microseconds, for delivery latency: a string, since cjson writes numbers
-- with 14 significant digits. Only on the channel: history readers need no more than `ts`.
event.a = now[1] .. string.format('%06d', tonumber(now[2]))
if dedupe then redis.call('SET', dedupe, id, 'PX', dedupe_ms) end
redis.call('PUBLISH', ARGV[1], cjson.encode(event))
return {{0, id}}
"""

# KEYS[1] the room's stream. ARGV: start (exclusive, as XRANGE takes it; '' for none), count,
# and '1' to read the newest entry too. Returns {the oldest id or '', the entries after the
# start, the newest entry (none, or one)}, read at once: a trim between the reads would hide a
# gap from the caller, and the newest is no newer than the replay it comes with.
HISTORY_AFTER: Final = """
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
local newest = {}
if ARGV[3] == '1' then
  newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
end
return {oldest[1] and oldest[1][1] or '', entries, newest}
"""

# Presence keys: KEYS[1] names hash (name -> number of nodes holding it), KEYS[2] holders zset
# (`<node>:<name>` scored by expiry in ms), KEYS[3] presence stream, KEYS[4] name keys hash
# (name -> the holder its first join gave: a key's hash, or ''). A name is present while its
# hash count is > 0; a join is announced when a name's count becomes 1 and a leave when it
# drops to 0: appended to the presence stream (so a node that was disconnected backfills it,
# as it does messages) and published on the room's channel with the stream id. Only while the
# room has at most `limit` names (the presence limit, an argument of every script that may
# announce): no client of a larger room gets presence frames, so none are produced. Every key
# expires 3 presence timeouts after the last join or refresh of a node holding a name in the
# room, so the keys of a room whose nodes died go too; the presence stream of a room that
# empties goes PRESENCE_LINGER_MS after its last leave (long enough for a subscribe in flight
# to read it; a stream costs ~4 KB even with one entry). The name's
# holder is set with its first join and dropped with its leave, in the same script, so two
# first joins with different keys on two nodes cannot both succeed.

PRESENCE_HISTORY: Final = 1000  # presence events a reconnecting node can still catch up on
PRESENCE_LINGER_MS: Final = 3000  # the presence stream of a room that emptied, kept this long

_NOW = f"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function announce(channel, event, name, names, limit)
  local count = redis.call('HLEN', names)
  if count > limit then return end
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', {PRESENCE_HISTORY}, '*',
    'e', event, 'n', name, 'c', count)
  if count == 0 then redis.call('PEXPIRE', KEYS[3], {PRESENCE_LINGER_MS}) end
  redis.call('PUBLISH', channel, cjson.encode({{k = 'p', i = id, e = event, n = name, c = count}}))
end
local function drop(names, channel, name, limit)
  if redis.call('HINCRBY', names, name, -1) <= 0 then
    redis.call('HDEL', names, name)
    redis.call('HDEL', KEYS[4], name)
    announce(channel, 'leave', name, names, limit)
  end
end
local function keep_alive(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
"""

# Removes holders whose expiry passed (their node died or lost Redis for the presence timeout)
# and announces the names that thereby leave.
_REAP = """
local function reap(channel, limit)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms(), 'LIMIT', 0, 1000)
  for _, holder in ipairs(dead) do
    redis.call('ZREM', KEYS[2], holder)
    drop(KEYS[1], channel, string.sub(holder, string.find(holder, ':', 1, true) + 1), limit)
  end
  return #dead
end
"""

# ARGV: channel, node id, timeout ms, presence limit, listing limit (0: no listing), j, then
# j pairs (name, holder) to join, then names to leave. One room's presence changes of one node,
# batched: each join holds the name on this node until now + timeout, unless it is present
# under another holder (then nothing changes for it); each leave drops this node's hold.
# Reaps first, so a dead node's names do not stay taken. Idempotent: a name this node already
# holds only gets its expiry pushed back. Returns {names present, {1 joined or 0 taken per
# join}, names listed}: with a listing limit, every name when there are at most that many,
# else that many of them (HRANDFIELD: any, cheaply; no HSCAN).
SYNC: Final = (
    _NOW
    + _REAP
    + """
local channel, node, timeout = ARGV[1], ARGV[2], tonumber(ARGV[3])
local limit, listing, joins = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
reap(channel, limit)
local expiry = now_ms() + timeout
local joined = {}
for i = 1, joins do
  local name, holder = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  local held_by = redis.call('HGET', KEYS[4], name)
  if held_by and held_by ~= holder then
    joined[i] = 0
  else
    if redis.call('ZADD', KEYS[2], expiry, node .. ':' .. name) == 1 then
      if redis.call('HINCRBY', KEYS[1], name, 1) == 1 then
        redis.call('HSET', KEYS[4], name, holder)
        announce(channel, 'join', name, KEYS[1], limit)
      end
    end
    joined[i] = 1
  end
end
for i = 7 + 2 * joins, #ARGV do
  if redis.call('ZREM', KEYS[2], node .. ':' .. ARGV[i]) == 1 then
    drop(KEYS[1], channel, ARGV[i], limit)
  end
end
if joins > 0 then keep_alive(timeout * 3) end
local count = redis.call('HLEN', KEYS[1])
local names = {}
if listing > 0 then
  if count <= listing then
    names = redis.call('HKEYS', KEYS[1])
  else
    names = redis.call('HRANDFIELD', KEYS[1], listing)
  end
end
return {count, joined, names}
"""
)

# ARGV: channel, name, presence limit. Who holds the name ('' for no key), or nil when it is
# free. Reaps first, as SYNC does, so that it answers what a join would find.
HOLDER: Final = (
    _NOW
    + _REAP
    + """
reap(ARGV[1], tonumber(ARGV[3]))
return redis.call('HGET', KEYS[4], ARGV[2])
"""
)

# ARGV: node id, timeout ms, name... Pushes back the expiry of names this node still holds and
# returns {names present, the names it no longer holds, Redis's time in ms} (the names: reaped
# while this node could not refresh, or lost with Redis's data): the node re-joins those through
# its batches (SYNC), which send each name's state as it is when they go, so a refresh never
# races a leave. The time tells the node when Redis's clock stepped (presence.ClockWatch).
REFRESH: Final = (
    _NOW
    + """
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
local missing = {}
for i = 3, #ARGV do
  local holder = ARGV[1] .. ':' .. ARGV[i]
  if redis.call('ZSCORE', KEYS[2], holder) then
    redis.call('ZADD', KEYS[2], 'XX', expiry, holder)
  else
    missing[#missing + 1] = ARGV[i]
  end
end
keep_alive(tonumber(ARGV[2]) * 3)
return {redis.call('HLEN', KEYS[1]), missing, now}
"""
)

# ARGV: channel, presence limit. Returns the names present if any holder was reaped, else -1.
REAP: Final = (
    _NOW
    + _REAP
    + "if reap(ARGV[1], tonumber(ARGV[2])) > 0 then return redis.call('HLEN', KEYS[1]) end\n"
    + "return -1\n"
)

# The room index (GET /api/rooms). KEYS: the index's members, seen and active zsets (one slot).

# ARGV: n, then n pairs (room, names present), then pairs (room, ts of its newest message),
# then the activity window in ms (last). Counts are confirmed with Redis's time; rooms with no
# message in the window are dropped from `active`.
INDEX: Final = (
    _NOW
    + """
local now = now_ms()
local n = tonumber(ARGV[1])
for i = 2, 2 * n, 2 do
  local room, count = ARGV[i], tonumber(ARGV[i + 1])
  if count > 0 then
    redis.call('ZADD', KEYS[1], count, room)
    redis.call('ZADD', KEYS[2], now, room)
  else
    redis.call('ZREM', KEYS[1], room)
    redis.call('ZREM', KEYS[2], room)
  end
end
for i = 2 * n + 2, #ARGV - 1, 2 do
  redis.call('ZADD', KEYS[3], 'GT', ARGV[i + 1], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[#ARGV])))
return 1
"""
)

# ARGV: limit, staleness ms, activity window ms. The rooms with most members (counts not
# confirmed within the staleness, from nodes that died, are dropped on the way: at most a few
# pages are read), then rooms with a message in the window, up to `limit`. Returns a flat list
# room, names present, ts of its newest message or '' (unknown: older than the window).
ROOMS: Final = (
    _NOW
    + """
local now = now_ms()
local limit = tonumber(ARGV[1])
local fresh = now - tonumber(ARGV[2])
local out, listed, k = {}, {}, 0
local function add(room, count, ts)
  listed[room] = true
  k = k + 1
  out[#out + 1] = room
  out[#out + 1] = count
  out[#out + 1] = ts
end
for round = 1, 4 do
  if k >= limit then break end
  -- the first k by rank are listed already: evicted ones are gone from the zset
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(0', 'WITHSCORES',
    'LIMIT', k, limit - k)
  local evicted = false
  for i = 1, #page, 2 do
    local room = page[i]
    local seen = tonumber(redis.call('ZSCORE', KEYS[2], room) or '0')
    if seen < fresh then
      redis.call('ZREM', KEYS[1], room)
      redis.call('ZREM', KEYS[2], room)
      evicted = true
    else
      add(room, page[i + 1], redis.call('ZSCORE', KEYS[3], room) or '')
    end
  end
  if not evicted then break end
end
if k < limit then
  local recent = redis.call('ZREVRANGEBYSCORE', KEYS[3], '+inf', now - tonumber(ARGV[3]),
    'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #recent, 2 do
    if k >= limit then break end
    if not listed[recent[i]] then add(recent[i], '0', recent[i + 1]) end
  end
end
return out
"""
)
