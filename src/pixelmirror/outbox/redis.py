"""An outbox in a Redis stream, shared by any number of web processes and workers."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from pixelmirror.config import masked_url
from pixelmirror.events import ServerEvent
from pixelmirror.outbox.base import Claimed, DeadLetter, Drops, OutboxCounts

logger = logging.getLogger("pixelmirror")

DEFAULT_STREAM = "pixelmirror:events"
DEFAULT_GROUP = "pixelmirror"
#: The consumer that owns released entries while they wait for their retry.
PARKED = "pixelmirror.waiting"
#: Longest lease or retry delay (400 days); longer ones are cut to it. See RedisOutbox.
HORIZON = 400 * 86_400.0
#: After a put found Redis unreachable, puts drop at once for this long instead of waiting.
PUT_COOLDOWN = 1.0
#: Socket timeout of the worker's commands (claims carry up to 1000 payloads).
WORKER_TIMEOUT = 10.0
_REPLAY_CHUNK = 500
_OPTIONS = ("stream", "group", "consumer", "maxlen", "timeout", "lease")

# -- scripts: every step that moves an entry runs in one script, so a crash between two
# commands cannot strand or lose it. KEYS[1] is always the stream, ARGV[1] the group.

# A receipt is "<entry id>:<delivery count>". Redis bumps the count on every hand-over
# (XREADGROUP, XAUTOCLAIM) and release sets it one higher, so a count that still matches
# proves nobody has claimed the entry since: the count is the claim token.
_HELD = """
local function held(id, count)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  return p ~= nil and p[4] == tonumber(count)
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
_CLAIM = (
    _HELD
    + """
local stream, tries, dead = KEYS[1], KEYS[2], KEYS[3]
local group, me, parked = ARGV[1], ARGV[2], ARGV[3]
local limit, hold, horizon, cursor = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local skip = {}
for i = 9, #ARGV do skip[ARGV[i]] = true end
local required = {'pixel_id', 'event_id', 'event_name', 'event_time', 'action_source', 'payload'}

local batch, taken, rest, counts = nil, {}, {}, {}
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
  local key = f.pixel_id .. '\\n' .. (f.test_event_code and ('+' .. f.test_event_code) or '-')
  if not skip[f.pixel_id] and #taken < limit and (batch == nil or batch == key) then
    batch = key
    taken[#taken + 1] = entry
    counts[id] = count
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
    out[#out + 1] = {id, count, tonumber(attempts[i] or '0'), entry[2]}
  end
end
return out
"""
)

# KEYS: stream, tries. ARGV: group, then id, count pairs.
_ACK = (
    _HELD
    + """
local done = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if held(id, ARGV[i + 1]) then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    done = done + 1
  end
end
return done
"""
)

# KEYS: stream, tries. ARGV: group, parked, idle, failed, then id, count pairs.
_RELEASE = (
    _HELD
    + """
local done = 0
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  if held(id, ARGV[i + 1]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3],
               'RETRYCOUNT', tonumber(ARGV[i + 1]) + 1, 'JUSTID')
    if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[2], id, 1) end
    done = done + 1
  end
end
return done
"""
)

# KEYS: stream. ARGV: group, consumer, idle, then id, count pairs. Only an entry this
# consumer still holds under the same count is renewed; XCLAIM with JUSTID resets its idle
# time without raising the count, so the receipt stays valid. Returns the renewed ids.
_RENEW = """
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
_BURY = (
    _HELD
    + """
local done = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if held(id, ARGV[i + 1]) then
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
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    done = done + 1
  end
end
return done
"""
)

# KEYS: stream, dead. ARGV: chunk size. Oldest dead letters first, so replay keeps order.
_REPLAY = """
local letters = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[1])
local drop = {reason = true, died_at = true, attempts = true}
for _, letter in ipairs(letters) do
  local args = {'XADD', KEYS[1], '*'}
  local fields = letter[2]
  for i = 1, #fields, 2 do
    if not drop[fields[i]] then
      args[#args + 1] = fields[i]
      args[#args + 1] = fields[i + 1]
    end
  end
  redis.call(unpack(args))
  redis.call('XDEL', KEYS[2], letter[1])
end
return #letters
"""

# KEYS: stream, dead. ARGV: group, parked, horizon. One snapshot of all three numbers.
_COUNTS = """
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
_RECLAIM = (
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
_RETIRE = """
local mine = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if mine.err == nil and #mine == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


class RedisOutbox:
    """Events in a Redis stream read by a consumer group, for many hosts.

    Web processes only append (``XADD``); workers anywhere claim with ``XREADGROUP``,
    answer, and take over what a dead worker left (``XAUTOCLAIM``). Delivery is
    at-least-once: an event leaves the stream only when acked after Meta accepted it, or
    when buried as a dead letter (stream ``<stream>:dead``, with the reason). A live worker
    renews its claims' leases while it sends; a worker killed mid-batch has its claims
    taken over once their lease runs out unrenewed, so the batch it was sending may reach
    Meta twice, with the same ``event_id`` (Meta deduplicates).

    *Durability* is Redis's: a returned :meth:`put` is in Redis's memory; whether it
    survives a Redis restart or failover depends on its persistence (AOF) and replication.

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
    batch key (pixel and test event code) not skipped and releases the rest at once, due
    now and without counting an attempt. One stream keeps puts, trimming and counting
    simple; mixed pixels only cost a re-scan.

    *Overflow.* With ``maxlen`` every ``XADD`` trims the stream to about that many
    entries (``MAXLEN ~``), the oldest first, whether waiting or in flight. A put counts
    what it trimmed (``XLEN`` before and after, in the same ``MULTI``) as dropped and
    logs it. The stream holds only unfinished events, as acked ones are deleted.

    *Unreachable Redis.* :meth:`write` (the web process's writer thread) raises after
    about twice ``timeout`` at most, and the writer keeps the events and tries again.
    :meth:`put` never raises: failures are counted as dropped and logged, and for
    ``PUT_COOLDOWN`` seconds afterwards puts drop at once instead of each waiting out the
    timeout. The worker's commands raise; the dispatcher logs and retries with backoff,
    reconnecting.

    *Consumers.* ``consumer`` names this process in the group. Give each worker a stable
    name (``?consumer=worker-3``, say the host or pod name): its first claim after a
    restart then takes back at once what the killed process held, instead of waiting for
    the lease. The default, ``<hostname>:<pid>``, is unique but changes with every
    restart. A forked child appends its pid. A consumer holding nothing is removed from
    the group on :meth:`close`.
    """

    durable = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        maxlen: int | None = None,
        timeout: float = 0.5,
        lease: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        shown = masked_url(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"a Redis outbox URL looks like redis://host:6379/0; got {shown!r}")
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise ValueError(f"the Redis database must be a number (redis://host/0); got {shown!r}")
        for name, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            if value is not None and not value.strip():
                raise ValueError(f"the Redis outbox {name} name must not be empty")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be positive; got {maxlen}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds; got {timeout}")
        if lease is not None and not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds; got {lease}")
        self._connection_url = urlunsplit(parts._replace(query="", fragment=""))
        self.url = shown
        self.stream = stream
        self.group = group
        self.maxlen = maxlen
        self.timeout = timeout
        self.lease = lease
        self._named = consumer
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self._tries = f"{stream}:tries"
        self._dead = f"{stream}:dead"
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._put_redis: redis.Redis | None = None
        self._work_redis: redis.Redis | None = None
        self._scripts: dict[str, Script] = {}
        self._group_ready = False
        self._reclaim = self._named is not None  # only a stable name has a previous life
        self._reclaim_lock = threading.Lock()
        self._cursor = "0-0"
        self._drops = Drops(self.url, (redis.RedisError,))
        self._put_blocked_until = 0.0
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> RedisOutbox:
        """Open ``redis://[:password@]host[:port][/db][?options]`` (``rediss://`` for TLS).

        Options: ``stream`` (default ``pixelmirror:events``), ``group`` (``pixelmirror``),
        ``consumer`` (this process's name in the group; default ``<hostname>:<pid>``),
        ``maxlen`` (cap the stream at about this many entries, trimming the oldest),
        ``timeout`` (seconds a put or a count may wait for Redis, default 0.5; the worker's
        commands wait ``WORKER_TIMEOUT``) and ``lease`` (seconds a claim is held without
        a renewal before other workers may take it over; default: the dispatcher's).
        """
        options = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown Redis outbox option(s) {', '.join(unknown)} in "
                f"{masked_url(url)!r}; expected {', '.join(_OPTIONS)}"
            )
        try:
            maxlen = int(options["maxlen"]) if "maxlen" in options else None
            timeout = float(options.get("timeout", 0.5))
            lease = float(options["lease"]) if "lease" in options else None
        except ValueError:
            raise ValueError(
                "maxlen must be an integer, timeout and lease numbers of seconds; "
                f"got {masked_url(url)!r}"
            ) from None
        return cls(
            url,
            stream=options.get("stream", DEFAULT_STREAM),
            group=options.get("group", DEFAULT_GROUP),
            consumer=options.get("consumer"),
            maxlen=maxlen,
            timeout=timeout,
            lease=lease,
        )

    # -- connections ------------------------------------------------------------------------

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # forked and nobody called after_fork(): do it now
            self.after_fork()

    def _client(self, *, quick: bool) -> redis.Redis:
        """The client for puts and counts (``timeout``), or the worker's (longer) one."""
        self._check_fork()
        with self._lock:
            if self._closed:
                raise redis.ConnectionError(f"outbox {self.url} is closed")
            client = self._put_redis if quick else self._work_redis
            if client is None:
                wait = self.timeout if quick else max(self.timeout, WORKER_TIMEOUT)
                client = redis.Redis.from_url(
                    self._connection_url,
                    socket_timeout=wait,
                    socket_connect_timeout=wait,
                    # One immediate retry renews a connection Redis closed while it sat in
                    # the pool; a timeout is not retried, so a put waits one timeout at most.
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                    health_check_interval=30,
                )
                if quick:
                    self._put_redis = client
                else:
                    self._work_redis = client
            return client

    def _run(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script with the worker's connection, creating the group when it is missing."""
        client = self._client(quick=False)
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        for first in (True, False):
            if not self._group_ready:
                self._create_group(client)
            try:
                return script(keys=keys, args=args, client=client)
            except redis.ResponseError as exc:
                if not first or "NOGROUP" not in str(exc):
                    raise
                self._group_ready = False  # the stream was deleted: make it again
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_group(self, client: redis.Redis) -> None:
        # From id 0: events put before any worker existed are read too.
        try:
            client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- the request path -------------------------------------------------------------------

    def put(self, events: Sequence[ServerEvent]) -> int:
        if not events:
            return 0
        if time.monotonic() < self._put_blocked_until:
            self._drops.add(len(events), f"Redis was unreachable less than {PUT_COOLDOWN:g}s ago")
            return 0
        try:
            return self.write(events)
        except Exception as exc:  # put's callers must never see an outbox failure
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                self._put_blocked_until = time.monotonic() + PUT_COOLDOWN
            self._drops.add(len(events), f"{type(exc).__name__}: {exc}", exc)
            return 0

    def write(self, events: Sequence[ServerEvent]) -> int:
        """One pipeline (``MULTI``/``EXEC``) for the whole group, waiting ``timeout`` at most.

        A reply lost to the timeout after Redis ran the pipeline leaves the events stored; a
        caller that tries again stores them twice, with the same ``event_id`` (Meta
        deduplicates).
        """
        if not events:
            return 0
        with self._client(quick=True).pipeline(transaction=True) as pipe:
            if self.maxlen is not None:
                pipe.xlen(self.stream)
            for event in events:
                pipe.xadd(self.stream, _fields(event), maxlen=self.maxlen, approximate=True)
            if self.maxlen is not None:
                pipe.xlen(self.stream)
            results = pipe.execute()
        if self.maxlen is not None:
            trimmed = int(results[0]) + len(events) - int(results[-1])
            if trimmed > 0:
                self._drops.add(
                    trimmed, f"stream over maxlen={self.maxlen}, its oldest entries trimmed"
                )
        return len(events)

    @property
    def dropped(self) -> int:
        return self._drops.total

    # -- the worker side --------------------------------------------------------------------

    def claim(
        self, limit: int, *, lease: float, skip_pixels: Collection[str] = ()
    ) -> list[Claimed]:
        if limit < 1:
            return []
        if self._reclaim:
            # Before any claim of this process: taken back after, it would be a live batch.
            with self._reclaim_lock:
                if self._reclaim:
                    self._run(
                        "reclaim",
                        _RECLAIM,
                        [self.stream],
                        [self.group, self.consumer, PARKED, _ms(HORIZON)],
                    )
                    self._reclaim = False
        lease = self.lease if self.lease is not None else lease
        reply = self._run(
            "claim",
            _CLAIM,
            [self.stream, self._tries, self._dead],
            [
                self.group,
                self.consumer,
                PARKED,
                limit,
                _ms(HORIZON - _clamp(lease)),
                _ms(HORIZON),
                self._cursor,
                repr(time.time()),
                *skip_pixels,
            ],
        )
        self._cursor = _text(reply[0])
        return [
            Claimed(f"{_text(entry_id)}:{count}", _event(fields), int(attempts))
            for entry_id, count, attempts, fields in reply[1:]
        ]

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        if not claims:
            return []
        lease = self.lease if self.lease is not None else lease
        renewed = self._run(
            "renew",
            _RENEW,
            [self.stream],
            [self.group, self.consumer, _ms(HORIZON - _clamp(lease)), *_receipts(claims)],
        )
        kept = {_text(entry_id) for entry_id in renewed}
        return [claim for claim in claims if claim.receipt.rpartition(":")[0] not in kept]

    def ack(self, claims: Sequence[Claimed]) -> None:
        if claims:
            self._run("ack", _ACK, [self.stream, self._tries], [self.group, *_receipts(claims)])

    def release(self, claims: Sequence[Claimed], *, delay: float, failed: bool = True) -> None:
        if claims:
            self._run(
                "release",
                _RELEASE,
                [self.stream, self._tries],
                [
                    self.group,
                    PARKED,
                    _ms(HORIZON - _clamp(delay)),
                    int(failed),
                    *_receipts(claims),
                ],
            )

    def bury(self, claims: Sequence[Claimed], reason: str) -> None:
        if claims:
            self._run(
                "bury",
                _BURY,
                [self.stream, self._tries, self._dead],
                [self.group, reason, repr(time.time()), *_receipts(claims)],
            )

    def counts(self) -> OutboxCounts:
        pending, in_flight, dead = self._client(quick=True).eval(
            _COUNTS, 2, self.stream, self._dead, self.group, PARKED, _ms(HORIZON)
        )
        dropped = self._drops.total
        return OutboxCounts(
            pending=int(pending), in_flight=int(in_flight), dead=int(dead), dropped=dropped
        )

    def unfinished_by_pixel(self) -> dict[str, int]:
        # Reads the whole stream, a chunk at a time: for the operator's `outbox stats`, not a
        # hot path.
        client = self._client(quick=False)
        found: Counter[str] = Counter()
        start = "-"
        while entries := client.xrange(self.stream, min=start, count=_SCAN_CHUNK):
            found.update(_text(raw.get(b"pixel_id", b"")) for _, raw in entries if raw)
            if len(entries) < _SCAN_CHUNK:
                break
            last_id = entries[-1][0]
            if last_id is None:
                break
            start = "(" + _text(last_id)
        return dict(found)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit < 1:
            return []
        letters = self._client(quick=False).xrevrange(self._dead, count=limit) or []
        result = []
        for _, raw in letters:
            if raw is None:
                continue
            fields = {_text(name): value for name, value in raw.items()}
            result.append(
                DeadLetter(_event(raw), _text(fields["reason"]), float(fields["died_at"]))
            )
        return result

    def replay_dead(self) -> int:
        # In chunks, each one atomic: a big replay never blocks Redis for long.
        client = self._client(quick=False)
        replayed = 0
        while moved := int(client.eval(_REPLAY, 2, self.stream, self._dead, _REPLAY_CHUNK)):
            replayed += moved
        return replayed

    # -- lifecycle --------------------------------------------------------------------------

    def after_fork(self) -> None:
        """Give a forked child connections, a lock and a consumer name of its own.

        The parent's clients are forgotten, not closed: redis-py never shuts down a socket
        from a process that did not open it. A no-op in the process that opened the outbox.
        """
        if self._pid == os.getpid():
            return
        closed = self._closed
        self._reset()
        self._closed = closed
        self._reclaim = False  # the parent is alive: what it holds is not ours to take
        self.consumer = f"{self._named or socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        """Close the connections; events stay in Redis. Closing twice is harmless."""
        self._check_fork()
        with self._lock:
            put_redis, work_redis = self._put_redis, self._work_redis
            self._put_redis = self._work_redis = None
            self._closed = True
        if work_redis is not None:
            # With the short timeout: a Redis that stopped answering must not hold up a close.
            quick = redis.Redis.from_url(
                self._connection_url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            try:
                quick.eval(_RETIRE, 1, self.stream, self.group, self.consumer)
            except redis.RedisError as exc:
                logger.debug("pixelmirror outbox %s: consumer left in place: %s", self.url, exc)
            quick.close()
            work_redis.close()
        if put_redis is not None:
            put_redis.close()


_SCAN_CHUNK = 5000


def _fields(event: ServerEvent) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {
        "pixel_id": event.pixel_id,
        "event_id": event.event_id,
        "event_name": event.event_name,
        "event_time": event.event_time,
        "action_source": event.action_source,
        "payload": event.payload,
    }
    if event.test_event_code is not None:  # absent, not empty: None must come back as None
        fields["test_event_code"] = event.test_event_code
    return fields


def _event(raw: Any) -> ServerEvent:
    """Rebuild an event from a flat ``[name, value, ...]`` list or a ``{name: value}`` dict.

    Claims only see complete entries (the claim script buries the rest); a dead letter made
    of a foreign entry comes back with blanks where its fields are missing.
    """
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    fields = {_text(name): value for name, value in pairs}
    code = fields.get("test_event_code")
    return ServerEvent(
        pixel_id=_text(fields.get("pixel_id", b"")),
        event_id=_text(fields.get("event_id", b"")),
        event_name=_text(fields.get("event_name", b"")),
        event_time=int(fields.get("event_time", 0)),
        action_source=_text(fields.get("action_source", b"")),
        payload=bytes(fields.get("payload", b"")),
        test_event_code=None if code is None else _text(code),
    )


def _receipts(claims: Sequence[Claimed]) -> list[str]:
    """``id, count, id, count, ...`` from receipts ``"<entry id>:<delivery count>"``."""
    flat = []
    for claim in claims:
        entry_id, _, count = claim.receipt.rpartition(":")
        flat += [entry_id, count]
    return flat


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), HORIZON)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
