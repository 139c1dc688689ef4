"""The dispatcher: background threads that drain an outbox into its destinations' sinks.

Each thread loops claim → send → answer. Batches form naturally: while a request is in
flight, new events pile up and the next claim takes up to ``batch_size`` of them. After a
short batch (events are flowing, but fewer than a batch were due) the thread lingers a few
milliseconds (``linger``) so the next batch fills: fewer, fuller requests cost less CPU per
event, at a latency of milliseconds. An idle thread wakes every ``flush_interval`` (or at
once on :meth:`Dispatcher.flush`, which also skips the linger).

Each batch goes to the sink of its destination (:mod:`pixelmirror.delivery.sink`), and
what happens to it follows the sink's answer (:mod:`pixelmirror.delivery.errors`):

* accepted → ack;
* transient → released for a retry after exponential backoff with jitter, or the wait Meta
  asked for, whichever is longer; the events keep their ids and times, nothing is re-built;
* access (the token) or request (app secret, pixel, API version) → this process pauses the
  pixel and keeps its events, due at once in the outbox: the pause is this process's own,
  so another process, or this one restarted with a fixed configuration, is not held back.
  A pause ends when the sink names a credential other than the refused one (asked every
  ``token_recheck`` seconds), when :meth:`Dispatcher.resume` is called (a successful
  check), or after ``pause_seconds``, when one batch probes Meta again;
* invalid (Meta names an event) → the batch is split in halves until the bad events stand
  alone; the good ones are sent, the bad ones dead-lettered with Meta's message.

Events that Meta would refuse as too old are dead-lettered before they can poison a batch,
and no retry delay (not even Meta's ``Retry-After``) parks an event past that moment.

A claim is a lease: while a batch is in flight (its halves and their retries included), a
heartbeat renews the leases of its events every third of the lease, so a slow sender keeps
its batch however long Meta takes, and a dead one stops renewing: its batch is taken over by
another sender once the lease runs out.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pixelmirror.config import Config
from pixelmirror.delivery.errors import (
    AccessError,
    InvalidEventsError,
    RequestError,
    TransientError,
)
from pixelmirror.delivery.heartbeat import Heartbeat
from pixelmirror.delivery.sink import Sink
from pixelmirror.delivery.tally import Latency, MatchQuality, log_fields
from pixelmirror.events import META, BatchKey
from pixelmirror.outbox.base import Claimed, Outbox

logger = logging.getLogger("pixelmirror.delivery")

#: Dead-letter events this close to Meta's age limit rather than risk the whole batch.
EXPIRY_MARGIN = 60.0
#: How long a paused pixel waits before one batch probes Meta again.
PAUSE_SECONDS = 60.0
#: How often a paused pixel's token resolver is asked again, past its cache.
TOKEN_RECHECK = 5.0
#: Poll period while someone waits in :meth:`Dispatcher.flush`.
FLUSH_POLL = 0.02
#: Wait after a short batch, so the next claim finds more events (see the module docstring).
LINGER = 0.005
#: Longest wait after repeated failures of the loop itself (say, the outbox is unreachable).
ERROR_BACKOFF_MAX = 30.0


@dataclass
class DeliveryCounts:
    """What this process's dispatcher did, since it started."""

    sent: int = 0
    retried: int = 0
    dead: int = 0
    expired: int = 0
    #: Refusals by class (one per answer, whatever the batch size): Meta asked for a retry,
    #: refused the token, refused the request, or named an invalid event.
    transient: int = 0
    access: int = 0
    request: int = 0
    invalid: int = 0


@dataclass(frozen=True)
class Pause:
    """Why this process holds a pixel's events back, and until when at most."""

    #: ``token``: Meta refused the token or its permissions. ``request``: Meta refused the
    #: request itself (app secret, pixel id, API version).
    cause: Literal["token", "request"]
    #: Fingerprint of the token Meta refused (never the token); None if there was none.
    token: str | None
    #: Monotonic time when one batch probes Meta again.
    until: float
    #: Monotonic time when the token resolver is asked again.
    recheck: float
    #: The destination whose sink refused, and is asked for a new credential.
    destination: str = META


class Dispatcher:
    """Sends what ``outbox`` holds through ``sinks`` from ``threads`` background threads.

    ``sinks`` maps destinations to their sinks; one sink alone serves Meta's destination.
    A batch whose destination has no sink in this process waits, retried like a transient
    failure, for a process that has one.

    Stopping finishes the batch in flight; a batch claimed but not sent is released, so a
    stop never strands events (and a crash only delays them until their lease runs out).
    """

    def __init__(
        self,
        outbox: Outbox,
        sinks: Mapping[str, Sink] | Sink,
        *,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        lease: float = 30.0,
        retry_backoff: float = 2.0,
        retry_backoff_max: float = 600.0,
        pause_seconds: float = PAUSE_SECONDS,
        token_recheck: float = TOKEN_RECHECK,
        threads: int = 1,
        linger: float = LINGER,
    ) -> None:
        self.outbox = outbox
        self.sinks: Mapping[str, Sink] = (
            dict(sinks) if isinstance(sinks, Mapping) else {META: sinks}
        )
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.linger = linger
        self.lease = lease
        # An outbox may give every claim a lease of its own (the Redis URL's): renew within it.
        self._heartbeat = Heartbeat(outbox, lease if outbox.lease is None else outbox.lease)
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.pause_seconds = pause_seconds
        self.token_recheck = token_recheck
        self.thread_count = threads
        self.counts = DeliveryCounts()
        #: The same counts, pixel by pixel.
        self.pixel_counts: dict[str, DeliveryCounts] = {}
        self._counts_lock = threading.Lock()
        #: How long the sinks took to answer each batch.
        self.latency = Latency()
        #: Which user_data keys the delivered events carried, by pixel and event name.
        self.quality = MatchQuality()
        self._paused: dict[str, Pause] = {}
        self._pause_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._flushing = 0
        # Batches between their claim and their counts: an acked batch has left the outbox
        # before it is counted, and a flush must not return in between.
        self._in_hand = 0
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_config(
        cls, config: Config, outbox: Outbox, sinks: Mapping[str, Sink], *, threads: int = 1
    ) -> Dispatcher:
        return cls(
            outbox,
            sinks,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            lease=config.lease,
            retry_backoff=config.retry_backoff,
            retry_backoff_max=config.retry_backoff_max,
            threads=threads,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._run, name=f"pixelmirror-dispatcher-{n}", daemon=True)
            for n in range(self.thread_count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the batches in flight; returns whether every thread ended in time."""
        self._stopping.set()
        self._wakeup.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    def flush(self, timeout: float) -> bool:
        """Send everything the outbox holds; True once it is all sent or dead-lettered.

        Retry delays and paused pixels are honoured, so a flush during an outage returns
        False at ``timeout`` with the events still safe in the outbox.
        """
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            self._wakeup.set()
            while self._in_hand or self.outbox.counts().unfinished:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._stopping.wait(min(FLUSH_POLL, remaining))
            return True
        finally:
            self._flushing -= 1

    @property
    def paused_pixels(self) -> tuple[str, ...]:
        now = time.monotonic()
        with self._pause_lock:
            return tuple(sorted(p for p, pause in self._paused.items() if pause.until > now))

    @property
    def pauses(self) -> Mapping[str, Pause]:
        """This process's pauses by pixel id, with what each was set for."""
        with self._pause_lock:
            return dict(self._paused)

    def resume(self, pixel_id: str, why: str = "resumed by hand") -> None:
        """End this process's pause of ``pixel_id`` (say, after a successful check)."""
        with self._pause_lock:
            pause = self._paused.pop(pixel_id, None)
        if pause is not None:
            logger.warning(
                "resumed pixel %s: %s",
                pixel_id,
                why,
                extra=log_fields(pause.destination, pixel_id, ()),
            )
            self._wakeup.set()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                claimed = self._claim_and_deliver()
            except Exception:  # never let one bad batch kill the sender
                failures += 1
                # An outbox that is down (Redis gone) fails every call: back off, don't spin.
                delay = self._error_backoff(failures)
                logger.exception(
                    "dispatcher failed (%d in a row); trying again in %.1fs",
                    failures,
                    delay,
                )
                self._stopping.wait(delay)
                continue
            failures = 0
            if not claimed:
                self._wakeup.wait(FLUSH_POLL if self._flushing else self.flush_interval)
                self._wakeup.clear()
            elif claimed < self.batch_size and self.linger > 0 and not self._flushing:
                self._wakeup.wait(self.linger)  # a flush or a stop cuts it short

    def deliver_next(self) -> bool:
        """Claim and deliver one batch; False when nothing was due."""
        return self._claim_and_deliver() > 0

    def _claim_and_deliver(self) -> int:
        """Claim and deliver one batch; how many events it held (0: nothing was due)."""
        claims = self.outbox.claim(
            self.batch_size, lease=self.lease, skip_pixels=self._still_paused()
        )
        if not claims:
            return 0
        # Claimed, the batch is unfinished in the outbox until its ack: count it from here.
        with self._counts_lock:
            self._in_hand += 1
        try:
            if self._stopping.is_set():
                self.outbox.release(claims, delay=0.0, failed=False)
                return 0
            with self._heartbeat.holding(claims):
                self._deliver(self._drop_expired(claims))
            return len(claims)
        finally:
            with self._counts_lock:
                self._in_hand -= 1

    def _still_paused(self) -> tuple[str, ...]:
        """The pixels to skip, after ending the pauses whose probe is due or whose sink now
        names another credential than the refused one."""
        now = time.monotonic()
        with self._pause_lock:
            due = {
                p: pause
                for p, pause in self._paused.items()
                if min(pause.recheck, pause.until) <= now
            }
            for pixel_id, pause in due.items():  # one thread asks; the next ask is later
                self._paused[pixel_id] = replace(pause, recheck=now + self.token_recheck)
        for pixel_id, pause in due.items():
            if pause.until <= now:
                with self._pause_lock:
                    self._paused.pop(pixel_id, None)  # the next batch is the probe
                continue
            sink = self.sinks.get(pause.destination)
            credential = None if sink is None else sink.fresh_credential(pixel_id)
            if credential is not None and credential != pause.token:
                self.resume(pixel_id, "the token resolver answers a new token")
        return self.paused_pixels

    def _sink(self, key: BatchKey) -> Sink:
        sink = self.sinks.get(key.destination)
        if sink is None:
            raise TransientError(f"no sink for destination {key.destination!r} in this process")
        return sink

    def _pause(self, key: BatchKey, exc: AccessError) -> Pause:
        now = time.monotonic()
        pause = Pause(
            cause="request" if isinstance(exc, RequestError) else "token",
            token=exc.token_fingerprint,
            until=now + self.pause_seconds,
            recheck=now + min(self.token_recheck, self.pause_seconds),
            destination=key.destination,
        )
        with self._pause_lock:
            self._paused[key.pixel_id] = pause
        return pause

    def _drop_expired(self, claims: list[Claimed]) -> list[Claimed]:
        cutoff = time.time() + EXPIRY_MARGIN
        expired = [c for c in claims if c.event.expires_at <= cutoff]
        if not expired:
            return claims
        self.outbox.bury(expired, "expired: Meta rejects events this old (7 days; 62 in store)")
        for claim in expired:
            self._count(claim.event.pixel_id, expired=1, dead=1)
        logger.error(
            "dead-lettered %d event(s) that grew too old to send",
            len(expired),
            extra=log_fields(expired[0].event.destination, expired[0].event.pixel_id, expired),
        )
        return [c for c in claims if c.event.expires_at > cutoff]

    def _deliver(self, claims: Sequence[Claimed]) -> None:
        if not claims:
            return
        key = claims[0].event.batch_key
        pixel_id = key.pixel_id
        try:
            self._send(key, claims)
        except TransientError as exc:
            delay = self._backoff(max(c.attempts for c in claims), exc.retry_after)
            # Due again before the first of them must be dead-lettered as too old.
            last_chance = min(c.event.expires_at for c in claims) - EXPIRY_MARGIN - time.time()
            delay = max(0.0, min(delay, last_chance))
            self.outbox.release(claims, delay=delay)
            self._count(pixel_id, retried=len(claims), transient=1)
            logger.warning(
                "%d event(s) for pixel %s will be retried in %.1fs: %s",
                len(claims),
                pixel_id,
                delay,
                exc,
                extra=log_fields(key.destination, pixel_id, claims, exc),
            )
        except AccessError as exc:
            pause = self._pause(key, exc)
            if pause.cause == "request":
                self._count(pixel_id, request=1)
            else:
                self._count(pixel_id, access=1)
            # Due at once: other processes skip only the pixels they paused themselves.
            self.outbox.release(claims, delay=0.0, failed=False)
            logger.error(
                "PAUSED pixel %s in this process, %d event(s) kept in the "
                "outbox: %s. %s One batch probes Meta again in %.0fs.",
                pixel_id,
                len(claims),
                exc,
                "Check PIXELMIRROR_APP_SECRET, PIXELMIRROR_PIXEL_ID and PIXELMIRROR_API_VERSION."
                if pause.cause == "request"
                else "Check PIXELMIRROR_ACCESS_TOKEN (or what the token resolver answers) and "
                "its permissions on the pixel; a new token resumes it within seconds.",
                self.pause_seconds,
                extra=log_fields(key.destination, pixel_id, claims, exc),
            )
        except InvalidEventsError as exc:
            self._count(pixel_id, invalid=1)
            if len(claims) == 1:
                self.outbox.bury(claims, str(exc))
                self._count(pixel_id, dead=1)
                logger.error(
                    "dead-lettered event %s (%s) for pixel %s: %s",
                    claims[0].event.event_id,
                    claims[0].event.event_name,
                    pixel_id,
                    exc,
                    extra=log_fields(key.destination, pixel_id, claims, exc),
                )
            else:
                # Meta rejects the whole batch for one bad event: halve until it stands alone.
                middle = len(claims) // 2
                self._deliver(claims[:middle])
                self._deliver(claims[middle:])
        else:
            self.outbox.ack(claims)
            with self._pause_lock:
                self._paused.pop(pixel_id, None)
            self._count(pixel_id, sent=len(claims))
            self.quality.count(pixel_id, (c.event for c in claims))

    def _send(self, key: BatchKey, claims: Sequence[Claimed]) -> None:
        """One sink call, timed whatever it answers."""
        started = time.monotonic()
        try:
            self._sink(key).deliver(key, [c.event.payload for c in claims])
        finally:
            self.latency.observe(time.monotonic() - started)

    def _error_backoff(self, failures: int) -> float:
        """Wait after the n-th failure in a row: flush_interval doubling, up to a ceiling."""
        ceiling = max(ERROR_BACKOFF_MAX, self.flush_interval)
        return min(ceiling, self.flush_interval * 2.0 ** (failures - 1)) * random.uniform(0.5, 1)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        exponential = min(self.retry_backoff_max, self.retry_backoff * 2.0**attempts)
        jittered = exponential * random.uniform(0.5, 1.0)  # spread a fleet's retries apart
        return max(jittered, retry_after or 0.0)

    def _count(self, pixel_id: str, **amounts: int) -> None:
        with self._counts_lock:
            per_pixel = self.pixel_counts.setdefault(pixel_id, DeliveryCounts())
            for counts in (self.counts, per_pixel):
                for name, amount in amounts.items():
                    setattr(counts, name, getattr(counts, name) + amount)
