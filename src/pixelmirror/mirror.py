"""``PixelMirror``: the object an app holds, a facade over three seams.

It wires the pieces (settings, outbox, handoff, sinks, dispatcher) and offers what an
app calls: :meth:`~PixelMirror.send`, the operations (``flush``, ``stats``, ``check``,
``close``) and the middleware (``wsgi``, ``asgi``, ``init_app``), whose rules live in
:class:`~pixelmirror.web.pages.Pages`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from pixelmirror import lifecycle
from pixelmirror.accounts import Account, AccountSource
from pixelmirror.config import ENV_PREFIX, Config
from pixelmirror.delivery import Sink, open_sinks
from pixelmirror.delivery.dispatcher import Dispatcher
from pixelmirror.delivery.graph import TokenSource
from pixelmirror.events import EventOptions, ServerEvent
from pixelmirror.facts import RequestFacts
from pixelmirror.handoff import Handoff, NotStored
from pixelmirror.identity import Identity
from pixelmirror.operations import (
    CheckResult,
    OutboxHealth,
    Stats,
    Tally,
    check_connection,
    gather_stats,
    log_unsent,
)
from pixelmirror.outbox import Outbox, open_outbox
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
        self._health = OutboxHealth(self.outbox)
        self._tally = Tally()
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
        self._tally.queued([event])

    def enqueue(self, events: Sequence[ServerEvent]) -> None:
        """Hand built events to the outbox (or, running dry, to the log). Never raises.

        A durable outbox gets them through the handoff, written by this process's writer
        thread: no outbox I/O happens on the caller's thread.
        """
        if self.dry_run:
            self._tally.ran_dry(events)
            return
        taken = (self.handoff or self.outbox).put(events)
        self._tally.queued(events if taken == len(events) else events[:taken])

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
            self._health.failed("flush", exc)
            return False
        self._health.answered()
        return done

    def stats(self) -> Stats:
        """Where every event stands. Never raises: an unavailable outbox is named in
        ``outbox_error`` (and logged once), with its counts None."""
        return gather_stats(
            self._health,
            self._tally,
            self.dispatcher,
            self.handoff,
            dropped=self.dropped,
            invalid=self._pages.invalid if self._pages is not None else 0,
        )

    def queued_by_pixel(self) -> dict[str, int]:
        """Events this process handed to the outbox, by pixel id."""
        return self._tally.queued_by_pixel()

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
        test_event_code = test_event_code or self.config.test_event_code
        return check_connection(self.sinks, self.dispatcher, pixel, test_event_code)

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
                self._health.failed("close", exc)
            self.dispatcher.stop(max(0.0, deadline - time.monotonic()))
        log_unsent(self.outbox)
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
        self._tally = Tally()
        if self.dispatcher is not None:
            self.sinks = open_sinks(self.config, tokens=self._tokens, transport=self._transport)
            self.dispatcher = Dispatcher.from_config(self.config, self.outbox, self.sinks)
            self.dispatcher.start()


__all__ = ["EVENTS_HEADER", "CheckResult", "PixelMirror", "Stats"]
