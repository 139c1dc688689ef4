"""``PixelMirror``: the object an app holds, a facade over three seams.

It wires the pieces (settings, outbox, handoff, sinks, dispatcher) and offers what an
app calls: :meth:`~PixelMirror.send`, the operations (``flush``, ``stats``, ``check``,
``close``) and the middleware (``wsgi``, ``asgi``, ``init_app``), whose rules live in
:class:`~pixelmirror.web.pages.Pages`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from pixelmirror import lifecycle, meta
from pixelmirror.accounts import Account, AccountSource
from pixelmirror.config import ENV_PREFIX, Config
from pixelmirror.delivery import Sink, open_sinks
from pixelmirror.delivery.dispatcher import DeliveryCounts, Dispatcher
from pixelmirror.delivery.errors import DeliveryError
from pixelmirror.delivery.graph import TokenSource, fault_of
from pixelmirror.events import EventOptions, ServerEvent
from pixelmirror.facts import RequestFacts
from pixelmirror.handoff import Handoff, NotStored
from pixelmirror.identity import Identity
from pixelmirror.normalize import sha256_hex
from pixelmirror.operations import CheckResult, Stats
from pixelmirror.outbox import Outbox, OutboxCounts, open_outbox
from pixelmirror.web.asgi import ASGIApp, PixelMirrorMiddleware
from pixelmirror.web.pages import Identify, Pages
from pixelmirror.web.response import EVENTS_HEADER, NonceSource, nonce_from_csp
from pixelmirror.web.wsgi import PixelMirrorWSGI, flask_settings, init_flask

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from prometheus_client import CollectorRegistry
    from typing_extensions import Unpack

    from pixelmirror.metrics import PixelMirrorCollector

logger = logging.getLogger("pixelmirror")

#: Dry-run events logged at WARNING (seen without any logging set up); the rest at INFO.
DRY_RUN_LOUD = 10
#: Seconds ``close()`` gives the handoff to store its events, whatever its ``timeout``.
CLOSE_STORE_MIN = 1.0

Consent = Callable[[RequestFacts], bool]
BotCheck = Callable[[RequestFacts], bool]


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

    Web hooks: ``identify(facts)`` returns user_data (long SDK names) that enriches every
    event of a request, say the logged-in customer's email; ``consent(facts)`` replaces the
    ``PIXELMIRROR_CONSENT_COOKIE`` rule; ``is_bot(facts)`` replaces the built-in crawler
    check (``pixelmirror.identity.is_crawler``, which a site's own rules can call);
    ``csp_nonce(facts, response_headers)`` finds the nonce for the injected script (default:
    the one in the response's own CSP header).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        identify: Identify | None = None,
        consent: Consent | None = None,
        is_bot: BotCheck | None = None,
        csp_nonce: NonceSource = nonce_from_csp,
        accounts: AccountSource | None = None,
        tokens: TokenSource | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and settings:
            raise TypeError("pass either a Config or keyword settings, not both")
        self._transport = transport
        self._identify = identify
        self._consent = consent
        self._is_bot = is_bot
        self._csp_nonce = csp_nonce
        self._tokens = tokens
        self._given_accounts = accounts
        #: The keyword settings given here (None: a whole Config was), which a framework's
        #: own settings (``init_app``) never override.
        self._explicit: dict[str, Any] | None = None if config is not None else settings
        self._wire(config if config is not None else Config.from_env(**settings))

    def _wire(self, config: Config) -> None:
        """Build everything the settings decide: accounts, outbox, handoff, sinks, sender."""
        self.config = config
        tokens, accounts = self._tokens, self._given_accounts
        self._identity: Identity | None = None
        self._pages: Pages | None = None
        if accounts is not None:
            self._accounts: AccountSource | None = accounts
        elif self.config.pixel_id:
            default = Account((self.config.pixel_id,), test_event_code=self.config.test_event_code)
            self._accounts = lambda facts: default
        else:
            self._accounts = None
        self.outbox: Outbox = open_outbox(self.config.outbox, max_events=self.config.queue_size)
        #: The sink of each destination; empty when running dry.
        self.sinks: dict[str, Sink] = {}
        self.dispatcher: Dispatcher | None = None
        #: Between requests and a durable outbox: a bounded queue and its writer thread.
        self.handoff: Handoff | None = None
        self._outbox_error: str | None = None
        self._counts_lock = threading.Lock()
        self._queued: Counter[str] = Counter()
        self._dry_run = 0
        self._closed = False
        #: No access token, token resolver or sink: events are validated and logged, not sent.
        self.dry_run = self.config.dry_run and tokens is None
        if self.dry_run:
            logger.warning(
                "no PIXELMIRROR_ACCESS_TOKEN, running dry: events are validated "
                "and logged, not sent"
            )
        else:
            if self.outbox.durable:  # the in-process one never blocks a request
                self.handoff = Handoff(
                    self.outbox,
                    max_events=self.config.handoff_size,
                    linger=self.config.handoff_linger,
                )
            self.sinks = open_sinks(self.config, tokens=tokens, transport=self._transport)
            if self.config.dispatch == "thread":
                self.dispatcher = Dispatcher.from_config(self.config, self.outbox, self.sinks)
                self.dispatcher.start()
        lifecycle.register(self)

    def __repr__(self) -> str:
        return f"<PixelMirror pixel_id={self.config.pixel_id} outbox={self.outbox.url}>"

    # -- sending --------------------------------------------------------------------------

    def send(
        self,
        event_name: str,
        *,
        action_source: str,
        user_data: Mapping[str, object],
        pixel_id: str | None = None,
        test_event_code: str | None = None,
        wait: bool | float = False,
        **options: Unpack[EventOptions],
    ) -> str:
        """Queue a server event for CAPI and return its ``event_id``.

        For events that happen away from a page: an approval decided offline, a refund, a
        subscription renewal. The event is validated (bad arguments raise
        :class:`ValueError`), serialised, and handed to the outbox; by default ``send``
        never blocks, and a durable outbox stores the event a few milliseconds later. The
        other keywords are :meth:`ServerEvent.create`'s (:class:`EventOptions`).

        ``wait=True`` (up to ``shutdown_timeout`` seconds) or ``wait=<seconds>`` returns only
        once the event is in the outbox, for jobs that must not lose it to a crash right
        after; it raises :class:`~pixelmirror.handoff.NotStored` if the outbox did not take
        it in time (it may still be stored later).
        """
        pixel = pixel_id or self.config.pixel_id
        if not pixel:
            raise ValueError("no pixel to send to: set PIXELMIRROR_PIXEL_ID or pass pixel_id=")
        event = ServerEvent.create(
            event_name,
            pixel_id=pixel,
            action_source=action_source,
            user_data=user_data,
            test_event_code=test_event_code or self.config.test_event_code,
            default_country=self.config.default_country,
            **options,
        )
        if not wait or self.dry_run:
            self.enqueue([event])
        else:
            timeout = self.config.shutdown_timeout if wait is True else float(wait)
            self._enqueue_and_wait(event, timeout)
        return event.event_id

    def _enqueue_and_wait(self, event: ServerEvent, timeout: float) -> None:
        if self.handoff is not None:
            self.handoff.put_and_wait([event], timeout)
        elif not self.outbox.put([event]):
            raise NotStored(f"event {event.event_id} dropped by the outbox {self.outbox.url}")
        with self._counts_lock:
            self._queued[event.pixel_id] += 1

    def enqueue(self, events: Sequence[ServerEvent]) -> None:
        """Hand built events to the outbox (or, running dry, to the log). Never raises.

        A durable outbox gets them through the handoff, written by this process's writer
        thread: no outbox I/O happens on the caller's thread.
        """
        if self.dry_run:
            with self._counts_lock:
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
            return
        taken = (self.handoff or self.outbox).put(events)
        with self._counts_lock:
            queued = self._queued
            for event in events[:taken]:  # a loop: Counter.update costs more for a few
                queued[event.pixel_id] += 1

    # -- the web -------------------------------------------------------------------------

    @property
    def identity(self) -> Identity | None:
        """Visitor identity, made when a middleware is set up (it needs the signing key).

        None without a pixel id or accounts: the middleware then passes every page through
        untouched.
        """
        if self._identity is None and self._accounts is not None:
            self._identity = Identity(self.config, consent=self._consent, is_bot=self._is_bot)
        return self._identity

    @property
    def pages(self) -> Pages:
        """The web rules, made when the first middleware is set up: a missing signing key
        fails there, not on a request."""
        if self._pages is None:
            self._pages = Pages(
                self.config,
                identity=self.identity,
                accounts=self._accounts,
                enqueue=self.enqueue,
                identify=self._identify,
                csp_nonce=self._csp_nonce,
                consent_gated=self._consent is not None,
            )
        return self._pages

    def wsgi(self, app: WSGIApplication) -> PixelMirrorWSGI:
        """Wrap a WSGI app: ``app.wsgi_app = mirror.wsgi(app.wsgi_app)``."""
        return PixelMirrorWSGI(app, self)

    def asgi(self, app: ASGIApp) -> PixelMirrorMiddleware:
        """Wrap an ASGI app: ``app = mirror.asgi(app)``."""
        return PixelMirrorMiddleware(app, self)

    def init_app(self, app: Any) -> None:
        """Flask's extension pattern: wrap ``app.wsgi_app``, register in ``app.extensions``.

        The app's ``PIXELMIRROR_*`` config keys are settings too: they win over the
        environment, and the keywords this mirror was built with win over them (a mirror
        built from a whole ``Config`` keeps it). Text values are read as the environment's
        are; other values (``False``, a tuple) are taken as they are.
        """
        self._adopt(flask_settings(app))
        init_flask(app, self)

    def _adopt(self, found: Mapping[str, object]) -> None:
        """Rebuild with a framework's settings, when they change anything."""
        if self._explicit is None or not found:
            return
        text = {name: value for name, value in found.items() if isinstance(value, str)}
        values = {
            name.removeprefix(ENV_PREFIX).lower(): value
            for name, value in found.items()
            if not isinstance(value, str)
        }
        config = Config.from_env({**os.environ, **text}, **{**values, **self._explicit})
        if config == self.config:
            return
        # What the first settings started (a sender, an outbox) stops before the new one starts.
        self.close()
        self._wire(config)

    # -- operating ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background sender if this process sends; idempotent."""
        if self.dispatcher is not None and not self._closed:
            self.dispatcher.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the outbox is empty (all sent or dead-lettered); False at ``timeout``.

        First the handoff is written to the outbox, then the sender drains it. Only a process
        that sends can wait for its outbox: with ``dispatch="external"`` this reports whether
        the outbox is empty right now. An unavailable outbox is logged and answers False.
        """
        deadline = time.monotonic() + timeout
        if self.handoff is not None and not self.handoff.flush(timeout):
            return False
        try:
            if self.dispatcher is not None:
                done = self.dispatcher.flush(max(0.0, deadline - time.monotonic()))
            else:
                done = self.outbox.counts().unfinished == 0
        except Exception as exc:
            self._outbox_failed("flush", exc)
            return False
        self._outbox_answered()
        return done

    def stats(self) -> Stats:
        """Where every event stands. Never raises: an unavailable outbox is named in
        ``outbox_error`` (and logged once), with its counts None."""
        counts: OutboxCounts | None
        try:
            counts = self.outbox.counts()
        except Exception as exc:
            counts = None
            self._outbox_failed("stats", exc)
        else:
            self._outbox_answered()
        dispatcher = self.dispatcher
        delivered = dispatcher.counts if dispatcher else DeliveryCounts()
        by_pixel = dict(dispatcher.pixel_counts) if dispatcher else {}
        queued = self.queued_by_pixel()
        with self._counts_lock:
            dry_run = self._dry_run
        pixels = {
            pixel_id: {
                "queued": queued.get(pixel_id, 0),
                "sent": by_pixel.get(pixel_id, DeliveryCounts()).sent,
                "retried": by_pixel.get(pixel_id, DeliveryCounts()).retried,
                "dead": by_pixel.get(pixel_id, DeliveryCounts()).dead,
            }
            for pixel_id in sorted(queued.keys() | by_pixel.keys())
        }
        handoff = self.handoff
        return Stats(
            queued=sum(queued.values()),
            dry_run=dry_run,
            dropped=self.dropped,
            invalid=self._pages.invalid if self._pages is not None else 0,
            sent=delivered.sent,
            retried=delivered.retried,
            dead=counts.dead if counts else None,
            pending=counts.pending if counts else None,
            in_flight=counts.in_flight if counts else None,
            paused_pixels=dispatcher.paused_pixels if dispatcher else (),
            pixels=pixels,
            handoff=handoff.held if handoff else 0,
            outbox_error=self._outbox_error or (handoff.error if handoff else None),
            match_quality=dispatcher.quality.shares() if dispatcher else {},
        )

    def queued_by_pixel(self) -> dict[str, int]:
        """Events this process handed to the outbox, by pixel id."""
        with self._counts_lock:
            return dict(self._queued)

    @property
    def dropped(self) -> int:
        """Events this process could not enqueue (handoff or outbox full, not stored)."""
        handoff = self.handoff
        return self.outbox.dropped + (handoff.drops.total if handoff else 0)

    def metrics(
        self, registry: CollectorRegistry | None = None, *, per_pixel: bool = True
    ) -> PixelMirrorCollector:
        """Register this mirror's Prometheus collector on ``registry`` (default: the
        ``prometheus_client`` global one) and return it; needs ``pixelmirror[prometheus]``.
        ``per_pixel=False`` folds the pixel label away (platforms with thousands of pixels)."""
        from pixelmirror.metrics import register_metrics

        return register_metrics(self, registry, per_pixel=per_pixel)

    def _outbox_failed(self, doing: str, exc: Exception) -> None:
        """Note an unavailable outbox; logged when the reason changes, not on every call."""
        error = f"{type(exc).__name__}: {exc}"
        if error != self._outbox_error:
            logger.warning("outbox %s unavailable (%s): %s", self.outbox.url, doing, error)
        self._outbox_error = error

    def _outbox_answered(self) -> None:
        if self._outbox_error is not None:
            logger.warning("outbox %s answers again", self.outbox.url)
            self._outbox_error = None

    def check(
        self, pixel_id: str | None = None, *, test_event_code: str | None = None
    ) -> CheckResult:
        """Send one test event now and report Meta's answer: "test this connection".

        The event goes straight to Meta's sink (not through the outbox) as
        ``PixelMirrorCheck`` with the test event code, so it shows in Events Manager > Test
        events (with ``PIXELMIRROR_SINK``, it is written to that file instead). Success ends
        this process's pause of the pixel, if any.
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
        sink = self.sinks.get(event.destination)
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
        if self.dispatcher is not None:  # what Meta just took, the paused pixel may send
            self.dispatcher.resume(pixel, "a check of the connection succeeded")
        return CheckResult(
            ok=True,
            pixel_id=pixel,
            events_received=answer.count,
            fbtrace_id=answer.trace_id,
            messages=answer.messages,
        )

    def close(self, timeout: float | None = None) -> None:
        """Store what the handoff holds, flush, then stop. Idempotent; never raises.

        ``timeout`` (default ``shutdown_timeout``) bounds the whole close, except that storing
        the handoff's events in the outbox gets at least ``CLOSE_STORE_MIN`` seconds even
        with ``timeout=0``: a process stopping without waiting for Meta still keeps its
        events. Events an unavailable outbox did not take in that time are logged (with
        their number) and counted as dropped.
        """
        if self._closed:
            return
        self._closed = True
        lifecycle.forget(self)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self.handoff is not None:
            # Logs (and counts) what it could not store.
            self.handoff.close(max(timeout, CLOSE_STORE_MIN))
        if self.dispatcher is not None:
            try:
                self.dispatcher.flush(max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                self._outbox_failed("close", exc)
            self.dispatcher.stop(max(0.0, deadline - time.monotonic()))
        try:
            counts = self.outbox.counts()
        except Exception as exc:  # an unreachable Redis: nothing to count, nothing to lose here
            logger.warning("closing; could not count unsent events: %s", exc)
            counts = OutboxCounts(0, 0, 0, 0)
        if counts.unfinished:
            durable = self.outbox.durable
            (logger.warning if durable else logger.error)(
                "closing with %d event(s) unsent: %s",
                counts.unfinished,
                "they stay in the outbox for the next sender"
                if durable
                else "they are lost with this process (use a sqlite:// or redis:// outbox)",
            )
        for sink in self.sinks.values():
            sink.close()
        try:
            self.outbox.close()
        except Exception:
            logger.exception("closing the outbox %s failed", self.outbox.url)

    def _after_fork(self) -> None:
        """In a forked child: fresh outbox connections, an empty handoff with its own writer,
        and a dispatcher of its own."""
        try:
            self.outbox.after_fork()
        except Exception:  # the child's own handoff and dispatcher must still be set up
            logger.exception("the outbox could not reopen in a forked child")
        if self.handoff is not None:
            self.handoff.after_fork()
        self._counts_lock = threading.Lock()
        self._queued, self._dry_run = Counter(), 0
        if self.dispatcher is not None:
            self.sinks = open_sinks(self.config, tokens=self._tokens, transport=self._transport)
            self.dispatcher = Dispatcher.from_config(self.config, self.outbox, self.sinks)
            self.dispatcher.start()


__all__ = ["EVENTS_HEADER", "CheckResult", "PixelMirror", "Stats"]
