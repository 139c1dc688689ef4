"""What an app asks of its :class:`~pixelmirror.mirror.PixelMirror` about its events:
:class:`Stats` (where every event stands) and :class:`CheckResult` (does this pixel work?),
and what they are made from: the process's :class:`Tally`, the :class:`OutboxHealth`
that notes an unavailable outbox, :func:`gather_stats` and :func:`check_connection`."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pixelmirror import meta
from pixelmirror.delivery.dispatcher import DeliveryCounts, Dispatcher
from pixelmirror.delivery.errors import DeliveryError
from pixelmirror.delivery.graph import fault_of
from pixelmirror.delivery.sink import Sink
from pixelmirror.events import ServerEvent
from pixelmirror.handoff import Handoff
from pixelmirror.normalize import sha256_hex
from pixelmirror.outbox import Outbox, OutboxCounts

logger = logging.getLogger("pixelmirror")

#: Dry-run events logged at WARNING (seen without any logging set up); the rest at INFO.
DRY_RUN_LOUD = 10


@dataclass(frozen=True)
class Stats:
    """Where every event of this process (and its outbox) stands."""

    #: Accepted by this process: handed to the outbox (a durable one through the handoff).
    queued: int
    #: Built and validated but not sent: no access token (dry run).
    dry_run: int
    #: Could not be enqueued (handoff or outbox full, not stored before close); all logged.
    dropped: int
    #: Server copies of tracked events the app's data made invalid (a text ``value``, say);
    #: each was logged with the reason. Their browser copies may have fired alone.
    invalid: int
    #: Accepted by Meta, through this process's dispatcher.
    sent: int
    #: Failed attempts rescheduled by this process's dispatcher.
    retried: int
    #: Dead letters in the outbox (Meta refused them, or they grew too old). None, like
    #: ``pending`` and ``in_flight``, when the outbox could not be asked: see ``outbox_error``.
    dead: int | None
    #: In the outbox, waiting to be sent (including retries not yet due).
    pending: int | None
    #: Claimed by a sender right now.
    in_flight: int | None
    #: Pixels whose token or permissions failed; their events wait in the outbox.
    paused_pixels: tuple[str, ...]
    #: Per pixel: queued (by this process), sent, retried, dead (by its dispatcher).
    pixels: dict[str, dict[str, int]]
    #: Handed over by this process's requests and not yet written to the outbox: what a
    #: SIGKILL now would lose.
    handoff: int = 0
    #: Why the outbox is unavailable (unreachable, locked, closed), or None when it answers.
    outbox_error: str | None = None
    #: Which customer-information keys the events this process's dispatcher delivered
    #: carried: ``{pixel: {event_name: {"events": n, "keys": {"em": 0.8, ...}, "faults":
    #: {"purchase_without_email_or_phone": 2, ...}}}}``; key names and counts, never values.
    match_quality: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """The answer to "does this pixel and token work?", fit to show to a person."""

    ok: bool
    pixel_id: str
    dry_run: bool = False
    events_received: int | None = None
    fbtrace_id: str | None = None
    messages: tuple[str, ...] = ()
    error: str | None = None
    #: What to do about the error, in plain words.
    hint: str | None = None


class Tally:
    """What this process handed over: events queued, by pixel, and events run dry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: Counter[str] = Counter()
        self._dry_run = 0

    def queued(self, events: Iterable[ServerEvent]) -> None:
        with self._lock:
            queued = self._queued
            for event in events:  # a loop: Counter.update costs more for a few
                queued[event.pixel_id] += 1

    def ran_dry(self, events: Sequence[ServerEvent]) -> None:
        """Count and log events built but not sent (no access token)."""
        with self._lock:
            before = self._dry_run
            self._dry_run += len(events)
        for n, event in enumerate(events, before + 1):
            # The first ones are loud: a Quick start shows them without logging set up.
            logger.log(
                logging.WARNING if n <= DRY_RUN_LOUD else logging.INFO,
                "dry run: %s %s for pixel %s: %s%s",
                event.event_name,
                event.event_id,
                event.pixel_id,
                event.payload.decode(),
                " (the next dry-run events are logged at INFO)" if n == DRY_RUN_LOUD else "",
            )

    def queued_by_pixel(self) -> dict[str, int]:
        with self._lock:
            return dict(self._queued)

    @property
    def dry_run(self) -> int:
        with self._lock:
            return self._dry_run


class OutboxHealth:
    """Whether an outbox answered the operations asked of it: an unavailable one is logged
    when the reason changes, not on every call, and once more when it answers again."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        #: Why the outbox failed the last operation, or None when it answered.
        self.error: str | None = None

    def failed(self, doing: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if error != self.error:
            logger.warning("outbox %s unavailable (%s): %s", self.outbox.url, doing, error)
        self.error = error

    def answered(self) -> None:
        if self.error is not None:
            logger.warning("outbox %s answers again", self.outbox.url)
            self.error = None


def gather_stats(
    health: OutboxHealth,
    tally: Tally,
    dispatcher: Dispatcher | None,
    handoff: Handoff | None,
    *,
    dropped: int,
    invalid: int,
) -> Stats:
    """:class:`Stats` from this process's counts and the outbox's; never raises."""
    counts: OutboxCounts | None
    try:
        counts = health.outbox.counts()
    except Exception as exc:
        counts = None
        health.failed("stats", exc)
    else:
        health.answered()
    delivered = dispatcher.counts if dispatcher else DeliveryCounts()
    by_pixel = dict(dispatcher.pixel_counts) if dispatcher else {}
    queued = tally.queued_by_pixel()
    pixels = {
        pixel_id: {
            "queued": queued.get(pixel_id, 0),
            "sent": by_pixel.get(pixel_id, DeliveryCounts()).sent,
            "retried": by_pixel.get(pixel_id, DeliveryCounts()).retried,
            "dead": by_pixel.get(pixel_id, DeliveryCounts()).dead,
        }
        for pixel_id in sorted(queued.keys() | by_pixel.keys())
    }
    return Stats(
        queued=sum(queued.values()),
        dry_run=tally.dry_run,
        dropped=dropped,
        invalid=invalid,
        sent=delivered.sent,
        retried=delivered.retried,
        dead=counts.dead if counts else None,
        pending=counts.pending if counts else None,
        in_flight=counts.in_flight if counts else None,
        paused_pixels=dispatcher.paused_pixels if dispatcher else (),
        pixels=pixels,
        handoff=handoff.held if handoff else 0,
        outbox_error=health.error or (handoff.error if handoff else None),
        match_quality=dispatcher.quality.shares() if dispatcher else {},
    )


def check_connection(
    sinks: Mapping[str, Sink],
    dispatcher: Dispatcher | None,
    pixel: str,
    test_event_code: str | None,
) -> CheckResult:
    """Deliver one ``PixelMirrorCheck`` test event for ``pixel`` straight to its sink (no
    sink: running dry, the event is shown) and report the answer; success ends the
    dispatcher's pause of the pixel, if any."""
    event = ServerEvent.create(
        "PixelMirrorCheck",
        pixel_id=pixel,
        action_source="system_generated",
        user_data={"external_id": sha256_hex("pixelmirror-check")},
        test_event_code=test_event_code,
    )
    sink = sinks.get(event.destination)
    if sink is None:
        return CheckResult(
            ok=True,
            pixel_id=pixel,
            dry_run=True,
            messages=(f"dry run, would send: {event.payload.decode()}",),
            hint="set PIXELMIRROR_ACCESS_TOKEN to test the connection to Meta",
        )
    try:
        answer = sink.deliver(event.batch_key, [event.payload])
    except DeliveryError as exc:
        return CheckResult(
            ok=False,
            pixel_id=pixel,
            fbtrace_id=exc.fbtrace_id,
            error=str(exc),
            hint=meta.advice(fault_of(exc), exc.code, exc.subcode, exc.message),
        )
    if dispatcher is not None:  # what Meta just took, the paused pixel may send
        dispatcher.resume(pixel, "a check of the connection succeeded")
    return CheckResult(
        ok=True,
        pixel_id=pixel,
        events_received=answer.count,
        fbtrace_id=answer.trace_id,
        messages=answer.messages,
    )


def log_unsent(outbox: Outbox) -> None:
    """At close: say how many events the outbox still holds, and whether they are lost."""
    try:
        counts = outbox.counts()
    except Exception as exc:  # an unreachable Redis: nothing to count, nothing to lose here
        logger.warning("closing; could not count unsent events: %s", exc)
        return
    if counts.unfinished:
        durable = outbox.durable
        (logger.warning if durable else logger.error)(
            "closing with %d event(s) unsent: %s",
            counts.unfinished,
            "they stay in the outbox for the next sender"
            if durable
            else "they are lost with this process (use a sqlite:// or redis:// outbox)",
        )
