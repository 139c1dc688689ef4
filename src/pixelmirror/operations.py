"""What an app asks of its :class:`~pixelmirror.mirror.PixelMirror` about its events:
:class:`Stats` (where every event stands) and :class:`CheckResult` (does this pixel work?)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
