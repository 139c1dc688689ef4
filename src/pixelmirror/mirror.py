"""``PixelMirror``: the object an app holds. It owns the outbox, the client and the dispatcher."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from pixelmirror.config import Config
from pixelmirror.delivery.dispatcher import Dispatcher
from pixelmirror.delivery.graph import (
    AccessError,
    GraphClient,
    GraphError,
    TransientError,
)
from pixelmirror.events import ServerEvent
from pixelmirror.normalize import sha256_hex
from pixelmirror.outbox import Outbox, open_outbox

logger = logging.getLogger("pixelmirror")


@dataclass(frozen=True)
class Stats:
    """Where every event of this process (and its outbox) stands."""

    #: Accepted into the outbox by this process.
    queued: int
    #: Built and validated but not sent: no access token (dry run).
    dry_run: int
    #: Could not be enqueued (outbox full or unreachable); each was logged.
    dropped: int
    #: Accepted by Meta, through this process's dispatcher.
    sent: int
    #: Failed attempts rescheduled by this process's dispatcher.
    retried: int
    #: Dead letters in the outbox (Meta refused them, or they grew too old).
    dead: int
    #: In the outbox, waiting to be sent (including retries not yet due).
    pending: int
    #: Claimed by a sender right now.
    in_flight: int
    #: Pixels whose token or permissions failed; their events wait in the outbox.
    paused_pixels: tuple[str, ...]

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


class PixelMirror:
    """Mirrors Meta Pixel events to the Conversions API.

    ::

        mirror = PixelMirror()                     # everything from PIXELMIRROR_* variables
        mirror = PixelMirror(pixel_id="1234567890", access_token="...", secret_key="...")
        mirror.send("Approval", action_source="system_generated",
                    user_data={"external_id": "cust-9", "email": "ann@example.com"})

    Keyword settings override the environment (see :class:`~pixelmirror.config.Config`).
    Construction fails fast on a bad setting. Without an access token it runs dry: events are
    built, validated, logged and counted, never sent.

    With ``dispatch="thread"`` (the default) a background thread sends; it starts now (to drain
    anything a previous process left in a durable outbox), restarts itself in a forked child,
    and flushes for up to ``shutdown_timeout`` seconds when the interpreter exits. With
    ``dispatch="external"`` this process only enqueues and ``pixelmirror worker`` sends.

    ``transport`` replaces the network, e.g. ``pixelmirror.testing.FakeGraphAPI().transport``.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and settings:
            raise TypeError("pass either a Config or keyword settings, not both")
        self.config = config if config is not None else Config.from_env(**settings)
        self._transport = transport
        self.outbox: Outbox = open_outbox(self.config.outbox, max_events=self.config.queue_size)
        self.client: GraphClient | None = None
        self.dispatcher: Dispatcher | None = None
        self._counts_lock = threading.Lock()
        self._queued = 0
        self._dry_run = 0
        self._closed = False
        if self.config.dry_run:
            logger.warning(
                "pixelmirror: no PIXELMIRROR_ACCESS_TOKEN, running dry: events are validated "
                "and logged, not sent"
            )
        else:
            self.client = GraphClient.from_config(self.config, transport=transport)
            if self.config.dispatch == "thread":
                self.dispatcher = Dispatcher.from_config(self.config, self.outbox, self.client)
                self.dispatcher.start()
        _live_mirrors.add(self)

    def __repr__(self) -> str:
        return f"<PixelMirror pixel_id={self.config.pixel_id} outbox={self.outbox.url}>"

    # -- sending --------------------------------------------------------------------------

    def send(
        self,
        event_name: str,
        *,
        action_source: str,
        user_data: Mapping[str, object],
        custom_data: Mapping[str, object] | None = None,
        event_time: int | float | None = None,
        event_id: str | None = None,
        event_source_url: str | None = None,
        referrer_url: str | None = None,
        opt_out: bool = False,
        data_processing_options: Sequence[str] | None = None,
        data_processing_options_country: int | None = None,
        data_processing_options_state: int | None = None,
        pixel_id: str | None = None,
        test_event_code: str | None = None,
    ) -> str:
        """Queue a server event for CAPI and return its ``event_id``.

        For events that happen away from a page: an approval decided offline, a refund, a
        subscription renewal. Never blocks on the network: the event is validated (bad
        arguments raise :class:`ValueError`), serialised, and put in the outbox.
        """
        pixel = pixel_id or self.config.pixel_id
        if not pixel:
            raise ValueError("no pixel to send to: set PIXELMIRROR_PIXEL_ID or pass pixel_id=")
        event = ServerEvent.create(
            event_name,
            pixel_id=pixel,
            action_source=action_source,
            user_data=user_data,
            custom_data=custom_data,
            event_time=event_time,
            event_id=event_id,
            event_source_url=event_source_url,
            referrer_url=referrer_url,
            opt_out=opt_out,
            data_processing_options=data_processing_options,
            data_processing_options_country=data_processing_options_country,
            data_processing_options_state=data_processing_options_state,
            test_event_code=test_event_code or self.config.test_event_code,
        )
        self.enqueue([event])
        return event.event_id

    def enqueue(self, events: Sequence[ServerEvent]) -> None:
        """Hand built events to the outbox (or, running dry, to the log). Never raises."""
        if self.config.dry_run:
            for event in events:
                logger.info(
                    "pixelmirror dry run: %s %s for pixel %s: %s",
                    event.event_name,
                    event.event_id,
                    event.pixel_id,
                    event.payload.decode(),
                )
            with self._counts_lock:
                self._dry_run += len(events)
            return
        taken = self.outbox.put(events)
        with self._counts_lock:
            self._queued += taken

    # -- operating ------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the outbox is empty (all sent or dead-lettered); False at ``timeout``.

        Only a process that sends can wait for its outbox: with ``dispatch="external"`` this
        reports whether the outbox is empty right now.
        """
        if self.dispatcher is not None:
            return self.dispatcher.flush(timeout)
        return self.outbox.counts().unfinished == 0

    def stats(self) -> Stats:
        counts = self.outbox.counts()
        delivered = self.dispatcher.counts if self.dispatcher else None
        with self._counts_lock:
            return Stats(
                queued=self._queued,
                dry_run=self._dry_run,
                dropped=counts.dropped,
                sent=delivered.sent if delivered else 0,
                retried=delivered.retried if delivered else 0,
                dead=counts.dead,
                pending=counts.pending,
                in_flight=counts.in_flight,
                paused_pixels=self.dispatcher.paused_pixels if self.dispatcher else (),
            )

    def check(
        self, pixel_id: str | None = None, *, test_event_code: str | None = None
    ) -> CheckResult:
        """Send one test event now and report Meta's answer: "test this connection".

        The event goes straight to Meta (not through the outbox) as ``PixelMirrorCheck``
        with the test event code, so it shows in Events Manager > Test events.
        """
        pixel = pixel_id or self.config.pixel_id
        if not pixel:
            raise ValueError("no pixel to check: set PIXELMIRROR_PIXEL_ID or pass pixel_id=")
        event = ServerEvent.create(
            "PixelMirrorCheck",
            pixel_id=pixel,
            action_source="system_generated",
            user_data={"external_id": sha256_hex("pixelmirror-check")},
            test_event_code=test_event_code or self.config.test_event_code,
        )
        if self.client is None:
            return CheckResult(
                ok=True,
                pixel_id=pixel,
                dry_run=True,
                messages=(f"dry run, would send: {event.payload.decode()}",),
                hint="set PIXELMIRROR_ACCESS_TOKEN to test the connection to Meta",
            )
        try:
            answer = self.client.send(pixel, [event.payload], test_event_code=event.test_event_code)
        except GraphError as exc:
            return CheckResult(
                ok=False,
                pixel_id=pixel,
                fbtrace_id=exc.fbtrace_id,
                error=str(exc),
                hint=_hint(exc),
            )
        return CheckResult(
            ok=True,
            pixel_id=pixel,
            events_received=answer.events_received,
            fbtrace_id=answer.fbtrace_id,
            messages=tuple(answer.messages),
        )

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to ``timeout`` (default ``shutdown_timeout``), then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _live_mirrors.discard(self)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self.dispatcher is not None:
            self.dispatcher.flush(timeout)
            self.dispatcher.stop(timeout)
        counts = self.outbox.counts()
        if counts.unfinished:
            durable = self.outbox.url != "memory://"
            (logger.warning if durable else logger.error)(
                "pixelmirror closing with %d event(s) unsent: %s",
                counts.unfinished,
                "they stay in the outbox for the next sender"
                if durable
                else "they are lost with this process (use a sqlite:// or redis:// outbox)",
            )
        if self.client is not None:
            self.client.close()
        self.outbox.close()

    def _after_fork(self) -> None:
        """In a forked child: fresh outbox connections, and a dispatcher of its own."""
        self.outbox.after_fork()
        self._counts_lock = threading.Lock()
        self._queued = self._dry_run = 0
        if self.dispatcher is not None and self.client is not None:
            self.client = GraphClient.from_config(self.config, transport=self._transport)
            self.dispatcher = Dispatcher.from_config(self.config, self.outbox, self.client)
            self.dispatcher.start()


def _hint(error: GraphError) -> str:
    if isinstance(error, TransientError):
        return "Meta is unreachable or throttling: try again in a few minutes"
    if error.code == 190:
        return (
            "the access token is invalid, expired or revoked: generate a new one in "
            "Events Manager > Settings > Conversions API"
        )
    if error.code == 2635:
        return "this Graph API version is retired: raise PIXELMIRROR_API_VERSION"
    if error.code == 100 and error.subcode == 33:
        return "no such pixel, or the token cannot reach it: check PIXELMIRROR_PIXEL_ID"
    if isinstance(error, AccessError):
        return (
            "the token lacks permission on this pixel: the system user needs the pixel "
            "assigned with 'Manage' access"
        )
    return "Meta rejected the event: see the message above"


# Process-wide hooks: flush at exit, restart dispatchers in forked children (gunicorn preload).
_live_mirrors: weakref.WeakSet[PixelMirror] = weakref.WeakSet()


def _close_all() -> None:
    for mirror in list(_live_mirrors):
        mirror.close()


def _after_fork_in_child() -> None:
    for mirror in list(_live_mirrors):
        mirror._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
