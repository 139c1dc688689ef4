"""The contract every outbox keeps, whatever stores the events.

An outbox is a queue of :class:`~pixelmirror.events.ServerEvent` with leases: ``claim`` hands
a batch to one sender for ``lease`` seconds, which it ``renew``s while the batch is in flight;
the sender then ``ack``s it (Meta accepted it), ``release``s it (try again after a delay) or
``bury``s it (dead letter, with a reason). A sender that dies without answering loses
nothing: its lease runs out unrenewed and the events are claimed again. Every event ends
sent, pending or dead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from pixelmirror.events import ServerEvent, slot_setter


@dataclass(frozen=True, slots=True, init=False)
class Claimed:
    """An event handed to a sender, with the outbox's handle to answer for it."""

    receipt: str
    event: ServerEvent
    #: Failed deliveries before this claim.
    attempts: int

    def __init__(self, receipt: str, event: ServerEvent, attempts: int) -> None:
        # Through the slots' descriptors: a claim makes up to a thousand, and a frozen
        # dataclass's own __init__ calls object.__setattr__ per field.
        _set_receipt(self, receipt)
        _set_event(self, event)
        _set_attempts(self, attempts)


_set_receipt = slot_setter(Claimed, "receipt")
_set_event = slot_setter(Claimed, "event")
_set_attempts = slot_setter(Claimed, "attempts")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event Meta will not take as it is, kept with the reason."""

    event: ServerEvent
    reason: str
    died_at: float


def dead_letter_matches(
    letter: DeadLetter, *, pixel_id: str | None = None, reason: str | None = None
) -> bool:
    """Whether ``letter`` passes a replay's filters: its pixel is ``pixel_id`` and ``reason``
    is part of its reason, ASCII letters matched case-insensitively (as SQLite's LIKE and
    Lua's ``string.lower`` do, so every outbox picks the same letters)."""
    if pixel_id is not None and letter.event.pixel_id != pixel_id:
        return False
    return reason is None or reason.encode().lower() in letter.reason.encode().lower()


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    #: Waiting to be claimed, now or after a retry delay.
    pending: int
    #: Claimed by a sender and not yet answered for.
    in_flight: int
    #: Dead letters kept.
    dead: int
    #: Events this process could not enqueue (outbox full or unreachable).
    dropped: int

    @property
    def unfinished(self) -> int:
        return self.pending + self.in_flight


class Drops:
    """Events an outbox could not take: counted, and each loss logged. Never raises.

    ``expected`` are the errors of the store that need no traceback (a full disk, a lost
    connection); anything else is logged with one.
    """

    def __init__(self, url: str, expected: tuple[type[BaseException], ...] = ()) -> None:
        self.url = url
        self.expected = expected
        self.total = 0
        self._lock = threading.Lock()

    def add(
        self, count: int, why: str, exc: BaseException | None = None, *, log: bool = True
    ) -> None:
        """Count ``count`` lost events; ``log=False`` counts one of a spell already logged."""
        if count <= 0:
            return
        with self._lock:
            self.total += count
            total = self.total
        if not log:
            return
        unexpected = exc is not None and not isinstance(exc, self.expected)
        logging.getLogger("pixelmirror.outbox").error(
            "outbox %s: dropped %d event(s): %s; %d dropped so far",
            self.url,
            count,
            why,
            total,
            exc_info=exc if unexpected else None,
        )


#: Called with the number of dead letters moved so far.
Progress = Callable[[int], None]


class Outbox(Protocol):
    """A durable-or-not, lease-based event queue shared by the web process and senders.

    Each outbox subclasses it, inheriting :attr:`dropped` and :meth:`replay_dead`.
    """

    url: str
    #: The lease every claim gets whatever the sender asks; None: the sender's.
    lease: float | None
    #: Events outlive this process (written through the handoff, kept at a restart).
    durable: bool

    def put(self, events: Sequence[ServerEvent]) -> int:
        """Enqueue events; returns how many were taken. Never raises: failures are counted."""

    def write(self, events: Sequence[ServerEvent]) -> int:
        """Store events as one group (one transaction, one pipeline); returns how many were
        taken, the rest being dropped for lack of room (counted and logged).

        Raises when the store cannot take them now (unreachable, locked, closed): nothing
        was counted, and the caller still holds the events to try again.
        """

    #: This process's lost events (the store is never asked for them).
    _drops: Drops

    @property
    def dropped(self) -> int:
        """Events this process could not enqueue, counted without asking the store."""
        return self._drops.total

    def claim(
        self, limit: int, *, lease: float, skip_pixels: Collection[str] = ()
    ) -> list[Claimed]:
        """Claim up to ``limit`` due events sharing one batch key (destination, pixel and
        test event code), none of a pixel in ``skip_pixels``."""

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        """Hold still-owned claims for ``lease`` more seconds; returns the claims not renewed.

        A claim is still owned while nobody has claimed its event since, even if its lease
        ran out meanwhile. One another sender took over (or that was answered) is left as it
        is and returned: never taken back.
        """

    def ack(self, claims: Sequence[Claimed]) -> None:
        """Forget delivered events."""

    def release(self, claims: Sequence[Claimed], *, delay: float, failed: bool = True) -> None:
        """Make events claimable again after ``delay`` seconds; ``failed`` counts an attempt."""

    def bury(self, claims: Sequence[Claimed], reason: str) -> None:
        """Move events to the dead letters, with the reason."""

    def counts(self) -> OutboxCounts: ...

    def unfinished_by_pixel(self) -> dict[str, int]:
        """Events not yet sent or dead (pending and in flight), by pixel id."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    def dead_count(self, *, pixel_id: str | None = None, reason: str | None = None) -> int:
        """How many dead letters :meth:`replay_dead` with these filters would move now,
        counted in the store (never loading them)."""

    def replay_dead(
        self,
        *,
        pixel_id: str | None = None,
        reason: str | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Move the dead letters of pixel ``pixel_id`` whose reason contains ``reason`` (see
        :func:`dead_letter_matches`; None: any) back to pending, oldest first; returns how
        many. Letters buried after the replay began stay dead. ``progress`` is called with
        the number moved so far after each chunk that moved some.
        """
        return self._replay_dead(pixel_id, reason, progress)

    def _replay_dead(
        self, pixel_id: str | None, reason: str | None, progress: Progress | None
    ) -> int:
        """:meth:`replay_dead`, as each store does it."""

    def after_fork(self) -> None:
        """Reset what a forked child must not share with its parent (connections, locks)."""

    def close(self) -> None: ...
