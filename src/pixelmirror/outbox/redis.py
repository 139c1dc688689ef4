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

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from pixelmirror.events import ServerEvent
from pixelmirror.outbox.base import Claimed, DeadLetter, Drops, Outbox, OutboxCounts, Progress
from pixelmirror.outbox.redis_entries import (
    claimed_event,
    entry_event,
    receipt_args,
    text,
    write_args,
)
from pixelmirror.outbox.redis_options import RedisOptions, connection_url
from pixelmirror.outbox.redis_scripts import (
    ACK,
    BURY,
    CLAIM,
    COUNTS,
    HORIZON,
    PARKED,
    RECLAIM,
    RELEASE,
    RENEW,
    REPLAY,
    RETIRE,
    WRITE,
)
from pixelmirror.urls import masked_url

logger = logging.getLogger("pixelmirror.outbox")

#: After a put found Redis unreachable, puts drop at once for this long instead of waiting.
PUT_COOLDOWN = 1.0
#: Socket timeout of the worker's commands (claims carry up to 1000 payloads).
WORKER_TIMEOUT = 10.0
_REPLAY_CHUNK = 500


class RedisOutbox(Outbox):
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

    *Leases, retries, claim tokens and batches* are the scripts' business: see
    :mod:`pixelmirror.outbox.redis_scripts`. Leases and delays are capped at 400 days.

    *Overflow.* With ``maxlen`` every ``XADD`` trims the stream to about that many
    entries (``MAXLEN ~``), the oldest first, whether waiting or in flight. A put counts
    what it trimmed (``XLEN`` before and after, in the same script) as dropped and
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
        self, url: str = "redis://127.0.0.1:6379/0", options: RedisOptions | None = None
    ) -> None:
        self._connection_url = connection_url(url)
        self.url = masked_url(url)
        self.options = options if options is not None else RedisOptions()
        self.lease = self.options.lease
        self.stream = self.options.stream
        self._tries = f"{self.stream}:tries"
        self._dead = f"{self.stream}:dead"
        self.consumer = self.options.consumer or f"{socket.gethostname()}:{os.getpid()}"
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._put_redis: redis.Redis | None = None
        self._work_redis: redis.Redis | None = None
        self._scripts: dict[str, Script] = {}
        self._write_script: Script | None = None
        self._group_ready = False
        # Only a stable name has a previous life to take back.
        self._reclaim = self.options.consumer is not None
        self._reclaim_lock = threading.Lock()
        self._cursor = "0-0"
        self._drops = Drops(self.url, (redis.RedisError,))
        self._put_blocked_until = 0.0
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> RedisOutbox:
        """Open ``redis://[:password@]host[:port][/db][?options]`` (``rediss://`` for TLS).

        Options: those of :class:`RedisOptions`, whose defaults they override: ``stream``,
        ``group``, ``consumer``, ``maxlen``, ``timeout`` (the worker's commands wait
        ``WORKER_TIMEOUT``) and ``lease``.
        """
        return cls(url, RedisOptions.from_url(url))

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
                wait = self.options.timeout if quick else max(self.options.timeout, WORKER_TIMEOUT)
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
            client.xgroup_create(self.stream, self.options.group, id="0", mkstream=True)
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
        """One script call (atomic, like ``MULTI``/``EXEC``) for the whole group, waiting
        ``timeout`` at most.

        A reply lost to the timeout after Redis ran the script leaves the events stored; a
        caller that tries again stores them twice, with the same ``event_id`` (Meta
        deduplicates).
        """
        if not events:
            return 0
        client = self._client(quick=True)
        if self._write_script is None:
            self._write_script = client.register_script(WRITE)
        before, after = self._write_script(
            keys=[self.stream], args=write_args(self.options.maxlen, events), client=client
        )
        if self.options.maxlen is not None:
            trimmed = int(before) + len(events) - int(after)
            if trimmed > 0:
                self._drops.add(
                    trimmed, f"stream over maxlen={self.options.maxlen}, its oldest entries trimmed"
                )
        return len(events)

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
                        RECLAIM,
                        [self.stream],
                        [self.options.group, self.consumer, PARKED, _ms(HORIZON)],
                    )
                    self._reclaim = False
        lease = self.lease if self.lease is not None else lease
        reply = self._run(
            "claim",
            CLAIM,
            [self.stream, self._tries, self._dead],
            [
                self.options.group,
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
        self._cursor = text(reply[0])
        return [
            Claimed(f"{entry_id.decode()}:{count}", claimed_event(fields), attempts)
            for entry_id, count, attempts, *fields in reply[1:]
        ]

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        if not claims:
            return []
        lease = self.lease if self.lease is not None else lease
        renewed = self._run(
            "renew",
            RENEW,
            [self.stream],
            [
                self.options.group,
                self.consumer,
                _ms(HORIZON - _clamp(lease)),
                *receipt_args(claims),
            ],
        )
        kept = {text(entry_id) for entry_id in renewed}
        return [claim for claim in claims if claim.receipt.rpartition(":")[0] not in kept]

    def ack(self, claims: Sequence[Claimed]) -> None:
        if claims:
            self._run(
                "ack", ACK, [self.stream, self._tries], [self.options.group, *receipt_args(claims)]
            )

    def release(self, claims: Sequence[Claimed], *, delay: float, failed: bool = True) -> None:
        if claims:
            self._run(
                "release",
                RELEASE,
                [self.stream, self._tries],
                [
                    self.options.group,
                    PARKED,
                    _ms(HORIZON - _clamp(delay)),
                    int(failed),
                    *receipt_args(claims),
                ],
            )

    def bury(self, claims: Sequence[Claimed], reason: str) -> None:
        if claims:
            self._run(
                "bury",
                BURY,
                [self.stream, self._tries, self._dead],
                [self.options.group, reason, repr(time.time()), *receipt_args(claims)],
            )

    def counts(self) -> OutboxCounts:
        pending, in_flight, dead = self._client(quick=True).eval(
            COUNTS, 2, self.stream, self._dead, self.options.group, PARKED, _ms(HORIZON)
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
            found.update(text(raw.get(b"pixel_id", b"")) for _, raw in entries if raw)
            if len(entries) < _SCAN_CHUNK:
                break
            last_id = entries[-1][0]
            if last_id is None:
                break
            start = "(" + text(last_id)
        return dict(found)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit < 1:
            return []
        letters = self._client(quick=False).xrevrange(self._dead, count=limit) or []
        result = []
        for _, raw in letters:
            if raw is None:
                continue
            fields = {text(name): value for name, value in raw.items()}
            result.append(
                DeadLetter(entry_event(raw), text(fields["reason"]), float(fields["died_at"]))
            )
        return result

    def dead_count(self, *, pixel_id: str | None = None, reason: str | None = None) -> int:
        client = self._client(quick=False)
        if pixel_id is None and reason is None:
            return int(client.xlen(self._dead))
        return self._scan_dead(client, False, pixel_id, reason, None)

    def _replay_dead(
        self, pixel_id: str | None, reason: str | None, progress: Progress | None
    ) -> int:
        return self._scan_dead(self._client(quick=False), True, pixel_id, reason, progress)

    def _scan_dead(
        self,
        client: redis.Redis,
        move: bool,
        pixel_id: str | None,
        reason: str | None,
        progress: Progress | None,
    ) -> int:
        """Count (or move back) the matching dead letters there are now, oldest first.

        In chunks, each one atomic: a big replay never blocks Redis for long. The filters
        run in Redis, so no letter crosses the network to be counted.
        """
        newest = client.xrevrange(self._dead, count=1)
        if not newest or newest[0][0] is None:
            return 0
        last = text(newest[0][0])  # letters buried from now on are left alone
        folded = (reason or "").encode().lower()  # Lua's string.lower folds ASCII only too
        filters = ("1" if pixel_id is not None else "0", pixel_id or "", folded)
        matched, after = 0, "-"
        while True:
            count, looked_at = client.eval(
                REPLAY, 2, self.stream, self._dead, _REPLAY_CHUNK, after, last, int(move), *filters
            )
            if count:
                matched += int(count)
                if progress is not None:
                    progress(matched)
            if looked_at is None or text(looked_at) == last:
                return matched
            after = text(looked_at)

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
        self.consumer = f"{self.options.consumer or socket.gethostname()}:{os.getpid()}"

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
                socket_timeout=self.options.timeout,
                socket_connect_timeout=self.options.timeout,
            )
            try:
                quick.eval(RETIRE, 1, self.stream, self.options.group, self.consumer)
            except redis.RedisError as exc:
                logger.debug("outbox %s: consumer left in place: %s", self.url, exc)
            quick.close()
            work_redis.close()
        if put_redis is not None:
            put_redis.close()


_SCAN_CHUNK = 5000


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), HORIZON)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
