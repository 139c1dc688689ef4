"""The Redis outbox's Lua scripts: what each step does to the stream, atomically.

Every step that moves an entry runs in one script, so a crash between two commands cannot
strand or lose it. KEYS[1] is always the stream, ARGV[1] the group (but for WRITE, which
needs no group).

An entry's fields are the event's: see :mod:`pixelmirror.outbox.redis_entries`.

*One clock, in Redis.* Every claimed or waiting entry stays in the group's pending list
and its idle time is the clock: a claim with lease ``L`` sets the entry's idle time to
``HORIZON - L`` (so does a renewal: ``XCLAIM ... JUSTID`` by the same consumer, which
keeps the delivery count), a release with delay ``D`` to ``HORIZON - D`` (handing it to
the consumer ``pixelmirror.waiting``), and ``XAUTOCLAIM`` with a minimum idle time of
``HORIZON`` finds exactly the expired leases and the retries that are due. No host's
clock is compared with another's; leases and delays are capped at 400 days. (A sorted
set of due times beside an ``XAUTOCLAIM`` on the lease would hand out retries parked
for longer than the lease, and could not give each claim a lease of its own.)

*Claim tokens.* A receipt carries the entry's delivery count, which every hand-over
raises: answering a claim that someone else has since taken over changes nothing.
Failed attempts are kept in the hash ``<stream>:tries``.

*Batches.* A claim takes due and new entries in id order, keeps those of the first
batch key (destination, pixel, test event code) not skipped and releases the rest at
once, due now and without counting an attempt. One stream keeps puts, trimming and counting
simple; mixed pixels only cost a re-scan.
"""

from __future__ import annotations

#: The consumer that owns released entries while they wait for their retry.
PARKED = "pixelmirror.waiting"
#: Longest lease or retry delay (400 days); longer ones are cut to it.
HORIZON = 400 * 86_400.0

# A receipt is "<entry id>:<delivery count>". Redis bumps the count on every hand-over
# (XREADGROUP, XAUTOCLAIM) and release sets it one higher, so a count that still matches
# proves nobody has claimed the entry since: the count is the claim token.
_HELD = """
local function held(id, count)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  return p ~= nil and p[4] == tonumber(count)
end
-- act(id, count) for each (id, count) pair from ARGV[first] on still held under that count;
-- returns how many.
local function each_held(first, act)
  local done = 0
  for i = first, #ARGV, 2 do
    if held(ARGV[i], ARGV[i + 1]) then
      act(ARGV[i], tonumber(ARGV[i + 1]))
      done = done + 1
    end
  end
  return done
end
-- Answered for good: out of the pending list, the stream and the tries (KEYS[2]).
local function forget(id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local function xclaim(consumer, ids, idle)
  local args = {'XCLAIM', KEYS[1], ARGV[1], consumer, 0}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = idle
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
"""

# KEYS: stream, tries, dead. ARGV: group, consumer, parked, limit, hold, horizon, cursor,
# died_at, skipped pixels...
CLAIM = (
    _HELD
    + """
local stream, tries, dead = KEYS[1], KEYS[2], KEYS[3]
local group, me, parked = ARGV[1], ARGV[2], ARGV[3]
local limit, hold, horizon, cursor = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local skip = {}
for i = 9, #ARGV do skip[ARGV[i]] = true end
local required = {'pixel_id', 'event_id', 'event_name', 'event_time', 'action_source', 'payload'}

local batch, taken, rest, counts, parsed = nil, {}, {}, {}, {}
local function consider(entry, count)
  local id, fields = entry[1], entry[2]
  if not fields then return end  -- trimmed away while pending
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  for _, name in ipairs(required) do
    if not f[name] then  -- not ours: bury it rather than hand it round forever
      local args = {'XADD', dead, '*'}
      for _, v in ipairs(fields) do args[#args + 1] = v end
      for _, v in ipairs({'reason', 'malformed stream entry: no ' .. name,
                          'died_at', ARGV[8], 'attempts', '0'}) do
        args[#args + 1] = v
      end
      redis.call(unpack(args))
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
      return
    end
  end
  -- The batch key; an entry without a destination is Meta's (see entry_fields).
  local key = (f.destination or 'meta') .. '\\n' .. f.pixel_id .. '\\n'
    .. (f.test_event_code and ('+' .. f.test_event_code) or '-')
  if not skip[f.pixel_id] and #taken < limit and (batch == nil or batch == key) then
    batch = key
    taken[#taken + 1] = entry
    counts[id] = count
    parsed[id] = f
  else
    rest[#rest + 1] = id
  end
end

-- Due first: expired leases and released entries whose delay is over, oldest id first.
local auto = redis.call('XAUTOCLAIM', stream, group, me, horizon, cursor, 'COUNT', limit)
for _, entry in ipairs(auto[2]) do consider(entry, nil) end
for _, id in ipairs(auto[3] or {}) do redis.call('HDEL', tries, id) end
if #taken < limit then
  local fresh = redis.call(
    'XREADGROUP', 'GROUP', group, me, 'COUNT', limit - #taken, 'STREAMS', stream, '>')
  if fresh then for _, entry in ipairs(fresh[1][2]) do consider(entry, 1) end end
end
-- Other batch keys go straight back, due now; the batch gets its lease.
if #rest > 0 then xclaim(parked, rest, horizon) end
local out = {auto[1]}
if #taken > 0 then
  local ids = {}
  for i, entry in ipairs(taken) do ids[i] = entry[1] end
  xclaim(me, ids, hold)
  local attempts = redis.call('HMGET', tries, unpack(ids))
  for i, entry in ipairs(taken) do
    local id = entry[1]
    -- A new entry's first delivery counts 1; a taken-over one's count must be asked.
    local count = counts[id] or redis.call('XPENDING', stream, group, id, id, 1)[1][4]
    local f = parsed[id]
    -- The fields by position, in redis_entries.claimed_event's order (false: absent), not
    -- the entry's names and values: half the strings for the client to read.
    out[#out + 1] = {id, count, tonumber(attempts[i] or '0'), f.pixel_id, f.event_id,
      f.event_name, f.event_time, f.action_source, f.payload, f.test_event_code or false,
      f.destination or false, f.match or false}
  end
end
return out
"""
)

# KEYS: stream, tries. ARGV: group, then id, count pairs. The entries still held are
# forgotten with one XACK, XDEL and HDEL per thousand, not three commands each.
ACK = (
    _HELD
    + """
local ids = {}
each_held(2, function(id) ids[#ids + 1] = id end)
for first = 1, #ids, 1000 do
  local last = math.min(first + 999, #ids)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, first, last))
  redis.call('XDEL', KEYS[1], unpack(ids, first, last))
  redis.call('HDEL', KEYS[2], unpack(ids, first, last))
end
return #ids
"""
)

# KEYS: stream, tries. ARGV: group, parked, idle, failed, then id, count pairs.
RELEASE = (
    _HELD
    + """
return each_held(5, function(id, count)
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3],
             'RETRYCOUNT', count + 1, 'JUSTID')
  if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[2], id, 1) end
end)
"""
)

# KEYS: stream. ARGV: group, consumer, idle, then id, count pairs. Only an entry this
# consumer still holds under the same count is renewed; XCLAIM with JUSTID resets its idle
# time without raising the count, so the receipt stays valid. Returns the renewed ids.
RENEW = """
local renewed = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if p ~= nil and p[2] == ARGV[2] and p[4] == tonumber(ARGV[i + 1]) then
    local done = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id,
                            'IDLE', ARGV[3], 'JUSTID')
    if #done > 0 then renewed[#renewed + 1] = id end
  end
end
return renewed
"""

# KEYS: stream, tries, dead. ARGV: group, reason, died_at, then id, count pairs.
BURY = (
    _HELD
    + """
return each_held(4, function(id)
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  if entry then
    local args = {'XADD', KEYS[3], '*'}
    for _, v in ipairs(entry[2]) do args[#args + 1] = v end
    local attempts = redis.call('HGET', KEYS[2], id) or '0'
    for _, v in ipairs({'reason', ARGV[2], 'died_at', ARGV[3], 'attempts', attempts}) do
      args[#args + 1] = v
    end
    redis.call(unpack(args))
  end
  forget(id)
end)
"""
)

# KEYS: stream, dead. ARGV: chunk size, the letter to start after ('-': from the first), the
# last letter, '1' to move the matching letters back (else only count them), '1' to keep only
# pixel ARGV[6], and the text the reason must contain (ASCII letters folded; '': any).
# Oldest letters first, so a replay keeps their order. Answers how many matched, and the id
# of the last letter looked at (none: nothing left to look at).
REPLAY = """
local start = ARGV[2] == '-' and '-' or '(' .. ARGV[2]
local letters = redis.call('XRANGE', KEYS[2], start, ARGV[3], 'COUNT', ARGV[1])
local drop = {reason = true, died_at = true, attempts = true}
local matched = 0
for _, letter in ipairs(letters) do
  local fields, kept = letter[2], {}
  local pixel, reason = '', ''
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'pixel_id' then pixel = fields[i + 1] end
    if name == 'reason' then reason = fields[i + 1] end
    if not drop[name] then
      kept[#kept + 1] = name
      kept[#kept + 1] = fields[i + 1]
    end
  end
  if (ARGV[5] ~= '1' or pixel == ARGV[6])
      and string.find(string.lower(reason), ARGV[7], 1, true) then
    matched = matched + 1
    if ARGV[4] == '1' then
      redis.call('XADD', KEYS[1], '*', unpack(kept))
      redis.call('XDEL', KEYS[2], letter[1])
    end
  end
end
local last = letters[#letters]
return {matched, last and last[1] or false}
"""

# KEYS: stream, dead. ARGV: group, parked, horizon. One snapshot of all three numbers.
COUNTS = """
local stored = redis.call('XLEN', KEYS[1])
local dead = redis.call('XLEN', KEYS[2])
local in_flight = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if summary.err == nil and summary[4] then
  for _, owner in ipairs(summary[4]) do
    if owner[1] ~= ARGV[2] then
      local owned = tonumber(owner[2])
      local expired = redis.call(
        'XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', owned, owner[1])
      in_flight = in_flight + owned - #expired
    end
  end
end
return {math.max(stored - in_flight, 0), in_flight, dead}
"""

# KEYS: stream. ARGV: group, consumer, parked, horizon. A restarted process with a stable
# name takes back at once what its previous life left in flight: that process is gone.
RECLAIM = (
    _HELD
    + """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
local ids = {}
for i, p in ipairs(mine) do ids[i] = p[1] end
if #ids > 0 then xclaim(ARGV[3], ids, ARGV[4]) end
return #ids
"""
)

# KEYS: stream. ARGV: group, consumer. Forget a consumer holding nothing, so processes that
# come and go (web servers sending with dispatch=thread) do not pile up in the group.
RETIRE = """
local mine = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if mine.err == nil and #mine == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


# A group of events in one call: ARGV[1] the MAXLEN (empty: none), then one argument per
# event, its entry's names and values as MessagePack strings (see
# redis_entries.packed_entry), which cmsgpack.unpack gives back as XADD's arguments. One
# argument per event instead of ~14 spares the client most of its packing; one command for
# the whole group, one reply, runs as atomically as a MULTI. Answers the stream's length
# before and after, which tells what was trimmed.
WRITE = """
local before = redis.call('XLEN', KEYS[1])
if ARGV[1] == '' then
  for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', cmsgpack.unpack(ARGV[i])) end
else
  for i = 2, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', cmsgpack.unpack(ARGV[i]))
  end
end
return {before, redis.call('XLEN', KEYS[1])}
"""
