"""An in-process outbox: fast, bounded, and gone with the process."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Collection, Sequence

from pixelmirror.events import BatchKey, ServerEvent
from pixelmirror.outbox.base import (
    Claimed,
    DeadLetter,
    Drops,
    Outbox,
    OutboxCounts,
    Progress,
    dead_letter_matches,
)

logger = logging.getLogger("pixelmirror.outbox")


class MemoryOutbox(Outbox):
    """Keeps up to ``max_events`` events (pending, delayed and in flight) in memory.

    When full, ``put`` drops the new events, counts them and logs: memory stays bounded and
    the request never waits. Events still here when the process exits are lost; use the
    SQLite or Redis outbox when that matters. Up to ``max_dead`` dead letters are kept.
    """

    url = "memory://"
    lease: float | None = None
    durable = False

    def __init__(self, *, max_events: int = 100_000, max_dead: int = 10_000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be positive; got {max_events}")
        self.max_events = max_events
        self._max_dead = max_dead
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        # One FIFO per batch key, so a claim never scans events it cannot take.
        self._ready: OrderedDict[BatchKey, deque[_Entry]] = OrderedDict()
        self._delayed: list[tuple[float, int, ServerEvent, int]] = []
        self._leased: dict[str, tuple[float, ServerEvent, int]] = {}
        self._dead: deque[DeadLetter] = deque(maxlen=self._max_dead)
        self._size = 0
        self._drops = Drops(self.url)

    def put(self, events: Sequence[ServerEvent]) -> int:
        with self._lock:
            room = self.max_events - self._size
            taken = events[:room] if room < len(events) else events
            ready = self._ready
            for event in taken:
                # A plain tuple equal to its batch_key finds the queue without the property's
                # call; a new queue is keyed by the BatchKey itself.
                plain = (event.destination, event.pixel_id, event.test_event_code)
                queue = ready.get(plain)  # type: ignore[call-overload]
                if queue is None:
                    queue = ready[event.batch_key] = deque()
                queue.append(event)
            self._size += len(taken)
        if len(taken) < len(events):
            self._drops.add(len(events) - len(taken), f"outbox full ({self.max_events} events)")
        return len(taken)

    def write(self, events: Sequence[ServerEvent]) -> int:
        """A put: in-process, it never blocks and never fails."""
        return self.put(events)

    def claim(
        self, limit: int, *, lease: float, skip_pixels: Collection[str] = ()
    ) -> list[Claimed]:
        now = time.monotonic()
        with self._lock:
            self._promote(now)
            for key in list(self._ready):
                if key.pixel_id in skip_pixels:
                    continue
                queue = self._ready[key]
                claims: list[Claimed] = []
                while queue and len(claims) < limit:
                    event, attempts = _attempted(queue.popleft())
                    receipt = str(next(self._ids))
                    self._leased[receipt] = (now + lease, event, attempts)
                    claims.append(Claimed(receipt, event, attempts))
                if queue:
                    self._ready.move_to_end(key)  # round-robin between pixels
                else:
                    del self._ready[key]
                return claims
            return []

    def _promote(self, now: float) -> None:
        """Move due retries and expired leases back to the ready queues."""
        while self._delayed and self._delayed[0][0] <= now:
            _, _, event, attempts = heapq.heappop(self._delayed)
            self._ready.setdefault(event.batch_key, deque()).append((event, attempts))
        expired = [receipt for receipt, (until, _, _) in self._leased.items() if until <= now]
        # Receipts are in claim order; put them back at the front in that same order.
        for receipt in reversed(expired):
            _, event, attempts = self._leased.pop(receipt)
            self._ready.setdefault(event.batch_key, deque()).appendleft((event, attempts))

    def _take(self, claims: Sequence[Claimed]) -> list[tuple[ServerEvent, int]]:
        """Remove still-leased claims; a claim whose lease ran out belongs to someone else."""
        taken = []
        for claim in claims:
            lease = self._leased.pop(claim.receipt, None)
            if lease is not None:
                taken.append(lease[1:])
        return taken

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        until = time.monotonic() + lease
        lost = []
        with self._lock:
            for claim in claims:
                held = self._leased.get(claim.receipt)
                if held is None:
                    lost.append(claim)
                else:
                    self._leased[claim.receipt] = (until, *held[1:])
        return lost

    def ack(self, claims: Sequence[Claimed]) -> None:
        with self._lock:
            self._size -= len(self._take(claims))

    def release(self, claims: Sequence[Claimed], *, delay: float, failed: bool = True) -> None:
        due = time.monotonic() + delay
        with self._lock:
            for event, attempts in self._take(claims):
                entry = (due, next(self._ids), event, attempts + failed)
                heapq.heappush(self._delayed, entry)

    def bury(self, claims: Sequence[Claimed], reason: str) -> None:
        now = time.time()
        with self._lock:
            taken = self._take(claims)
            self._size -= len(taken)
            evicted = max(0, len(self._dead) + len(taken) - self._max_dead)
            self._dead.extend(DeadLetter(event, reason, now) for event, _ in taken)
        self._drops.add(evicted, f"more than {self._max_dead} dead letters, the oldest went")

    def counts(self) -> OutboxCounts:
        now = time.monotonic()
        with self._lock:
            in_flight = sum(1 for until, _, _ in self._leased.values() if until > now)
            return OutboxCounts(
                pending=self._size - in_flight,
                in_flight=in_flight,
                dead=len(self._dead),
                dropped=self._drops.total,
            )

    def unfinished_by_pixel(self) -> dict[str, int]:
        with self._lock:
            waiting = [_attempted(entry)[0] for queue in self._ready.values() for entry in queue]
            waiting += (event for _, _, event, _ in self._delayed)
            waiting += (event for _, event, _ in self._leased.values())
            return dict(Counter(event.pixel_id for event in waiting))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(itertools.islice(reversed(self._dead), limit))

    def dead_count(self, *, pixel_id: str | None = None, reason: str | None = None) -> int:
        with self._lock:
            return sum(
                dead_letter_matches(letter, pixel_id=pixel_id, reason=reason)
                for letter in self._dead
            )

    def _replay_dead(
        self, pixel_id: str | None, reason: str | None, progress: Progress | None
    ) -> int:
        with self._lock:
            # Only as many as fit: the rest stay dead rather than being dropped.
            room = self.max_events - self._size
            replayed: list[ServerEvent] = []
            kept: deque[DeadLetter] = deque(maxlen=self._max_dead)
            for letter in self._dead:
                if len(replayed) < room and dead_letter_matches(
                    letter, pixel_id=pixel_id, reason=reason
                ):
                    replayed.append(letter.event)
                else:
                    kept.append(letter)
            self._dead = kept
        moved = self.put(replayed)
        if progress is not None and moved:
            progress(moved)
        return moved

    def after_fork(self) -> None:
        # The parent still owns (and will send) what it had queued: start empty.
        self._reset()

    def close(self) -> None:
        """Nothing to release; events still queued are lost with the process."""


#: A ready event: alone when it was never tried (what a put appends: no tuple kept per
#: event, so the collector has half as many objects to look at), with its attempts when
#: it comes back.
_Entry = ServerEvent | tuple[ServerEvent, int]


def _attempted(entry: _Entry) -> tuple[ServerEvent, int]:
    return entry if isinstance(entry, tuple) else (entry, 0)
