"""``PixelMirror``: the object an app holds. It owns the outbox, the client and the dispatcher."""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from pixelmirror import meta
from pixelmirror.accounts import Account, AccountSource
from pixelmirror.beacon import (
    BeaconRefused,
    RateLimiter,
    check_origin,
    ip_budget_key,
    origin_of,
    parse_request,
)
from pixelmirror.config import Config
from pixelmirror.delivery.dispatcher import DeliveryCounts, Dispatcher
from pixelmirror.delivery.graph import GraphClient, GraphError, TokenSource, fault_of
from pixelmirror.events import BrowserEvent, ServerEvent
from pixelmirror.facts import RequestFacts
from pixelmirror.handoff import Handoff, NotStored
from pixelmirror.identity import Identity
from pixelmirror.inject import InsertionScanner, rewrite_headers, should_inject
from pixelmirror.normalize import sha256_hex
from pixelmirror.outbox import MemoryOutbox, Outbox, OutboxCounts, open_outbox
from pixelmirror.snippet import render_beacon_snippet, render_snippet
from pixelmirror.tracking import TrackedEvent, Visit

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from pixelmirror.asgi import ASGIApp, PixelMirrorMiddleware
    from pixelmirror.wsgi import PixelMirrorWSGI

logger = logging.getLogger("pixelmirror")


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


@dataclass(frozen=True)
class Plan:
    """What the adapter does to one response: decided by :meth:`PixelMirror.plan`.

    With a ``snippet``, the adapter holds the response in a :class:`HeldPage` until the
    snippet has its place; a page without one gets the ``fallback`` plan instead. Without a
    snippet, :meth:`apply` gives the response's headers.
    """

    snippet: bytes | None = None
    cookies: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    #: The response carries this visitor's own ids: keep it out of shared caches.
    private: bool = True
    #: For a snippet that finds no place: announce the events another way.
    fallback: Plan | None = None

    def apply(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers of a response this plan adds cookies or events to, body unchanged."""
        if not self.cookies and not self.headers:
            return list(headers)
        fixed = rewrite_headers(
            headers, added_length=0, set_cookies=self.cookies, private=self.private
        )
        return [*fixed, *self.headers]


class HeldPage:
    """One page's body on its way out, held until the snippet has its place.

    Both adapters feed it chunks; :meth:`feed` answers None while it must hold on, then the
    headers and the bytes to send. The page goes out untouched (with the plan's fallback)
    if it has no ``</head>`` or ``<body>``, already carries the snippet, or outgrows
    ``max_buffer``. Each byte is scanned once, whatever the chunks; the chunks are kept as
    they came and joined once, with the snippet, on the way out.
    """

    def __init__(self, plan: Plan, headers: Sequence[tuple[str, str]], max_buffer: int) -> None:
        assert plan.snippet is not None
        self.plan = plan
        self.snippet = plan.snippet
        self.headers = headers
        self.max_buffer = max_buffer
        self.chunks: list[bytes] = []
        self.size = 0
        self.scanner = InsertionScanner()
        self.injected = False

    def feed(self, chunk: bytes, *, more: bool) -> tuple[list[tuple[str, str]], bytes] | None:
        if chunk:
            if type(chunk) is not bytes:  # a buffer the app may reuse: keep a copy
                chunk = bytes(chunk)
            self.chunks.append(chunk)
            self.size += len(chunk)
        scanner = self.scanner
        point = scanner.feed(chunk)
        if not more:
            point = scanner.end()
        if point is not None:
            self.injected = True
            headers = rewrite_headers(
                self.headers,
                added_length=len(self.snippet),
                set_cookies=self.plan.cookies,
                private=self.plan.private,
            )
            return headers, self._spliced(point)
        if more and not scanner.done and self.size <= self.max_buffer:
            return None
        return self.give_up()

    def _spliced(self, point: int) -> bytes:
        """The held bytes with the snippet at ``point``, in one join (views, no copies)."""
        start = 0
        for index, chunk in enumerate(self.chunks):
            if start + len(chunk) >= point:
                view = memoryview(chunk)
                at = point - start
                return b"".join(
                    (
                        *self.chunks[:index],
                        view[:at],
                        self.snippet,
                        view[at:],
                        *self.chunks[index + 1 :],
                    )
                )
            start += len(chunk)
        raise AssertionError("the insertion point lies in the held bytes")

    def give_up(self) -> tuple[list[tuple[str, str]], bytes]:
        """The page as the app made it, with the plan's fallback headers."""
        fallback = self.plan.fallback
        headers = fallback.apply(self.headers) if fallback else list(self.headers)
        return headers, b"".join(self.chunks)


@dataclass(frozen=True)
class BeaconAnswer:
    """The beacon endpoint's response, for the adapter to send as it is."""

    status: int
    body: bytes
    content_type: str = "application/json"
    cookies: tuple[str, ...] = ()

    @classmethod
    def failed(cls) -> BeaconAnswer:
        """A beacon pixelmirror could not answer: the page fires without eventID."""
        return cls(500, b"pixelmirror could not answer", content_type="text/plain")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            *(("Set-Cookie", cookie) for cookie in self.cookies),
        ]


_REDIRECTS = frozenset({301, 302, 303, 307, 308})

#: Seconds ``close()`` gives the handoff to store its events, whatever its ``timeout``.
CLOSE_STORE_MIN = 1.0

#: Response header that tells a front end which events to fire with which eventID.
EVENTS_HEADER = "X-PixelMirror-Events"

Identify = Callable[[RequestFacts], "Mapping[str, object] | None"]
Consent = Callable[[RequestFacts], bool]
BotCheck = Callable[[RequestFacts], bool]


class NonceSource(Protocol):
    def __call__(self, facts: RequestFacts, headers: Sequence[tuple[str, str]]) -> str | None: ...


_CSP_NONCE = re.compile(r"(?:^|;)\s*(?:script-src|default-src)\b[^;]*?'nonce-([A-Za-z0-9+/_=-]+)'")


def nonce_from_csp(facts: RequestFacts, headers: Sequence[tuple[str, str]]) -> str | None:
    """The default nonce source: the ``'nonce-...'`` of the response's own CSP header.

    Whatever framework made the nonce, it is in the policy it sends; reusing it lets the
    injected script run under that policy.
    """
    for name, value in headers:
        if name.lower() == "content-security-policy":
            match = _CSP_NONCE.search(value)
            if match:
                return match.group(1)
    return None


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
        self.config = config if config is not None else Config.from_env(**settings)
        self._transport = transport
        self._identify = identify
        self._consent = consent
        self._is_bot = is_bot
        self._csp_nonce = csp_nonce
        self._tokens = tokens
        self._identity: Identity | None = None
        if accounts is not None:
            self._accounts: AccountSource | None = accounts
        elif self.config.pixel_id:
            default = Account((self.config.pixel_id,), test_event_code=self.config.test_event_code)
            self._accounts = lambda facts: default
        else:
            self._accounts = None
        self._beacon_allowed = frozenset(self.config.beacon_events) | {"PageView"}
        self._beacon_visitors = RateLimiter(self.config.beacon_rate)
        self._beacon_ips = RateLimiter(5 * self.config.beacon_rate)
        self.outbox: Outbox = open_outbox(self.config.outbox, max_events=self.config.queue_size)
        self.client: GraphClient | None = None
        self.dispatcher: Dispatcher | None = None
        #: Between requests and a durable outbox: a bounded queue and its writer thread.
        self.handoff: Handoff | None = None
        self._outbox_error: str | None = None
        self._counts_lock = threading.Lock()
        self._queued: Counter[str] = Counter()
        self._dry_run = 0
        self._invalid = 0
        self._closed = False
        #: No access token and no token resolver: events are validated and logged, not sent.
        self.dry_run = self.config.access_token is None and tokens is None
        if self.dry_run:
            logger.warning(
                "pixelmirror: no PIXELMIRROR_ACCESS_TOKEN, running dry: events are validated "
                "and logged, not sent"
            )
        else:
            if not isinstance(self.outbox, MemoryOutbox):  # that one never blocks a request
                self.handoff = Handoff(
                    self.outbox,
                    max_events=self.config.handoff_size,
                    linger=self.config.handoff_linger,
                )
            self.client = GraphClient.from_config(self.config, tokens=tokens, transport=transport)
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
        wait: bool | float = False,
    ) -> str:
        """Queue a server event for CAPI and return its ``event_id``.

        For events that happen away from a page: an approval decided offline, a refund, a
        subscription renewal. The event is validated (bad arguments raise
        :class:`ValueError`), serialised, and handed to the outbox; by default ``send``
        never blocks, and a durable outbox stores the event a few milliseconds later.

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
        taken = (self.handoff or self.outbox).put(events)
        with self._counts_lock:
            self._queued.update(event.pixel_id for event in events[:taken])

    # -- the web -------------------------------------------------------------------------

    def wsgi(self, app: WSGIApplication) -> PixelMirrorWSGI:
        """Wrap a WSGI app: ``app.wsgi_app = mirror.wsgi(app.wsgi_app)``."""
        from pixelmirror.wsgi import PixelMirrorWSGI

        return PixelMirrorWSGI(app, self)

    def init_app(self, app: Any) -> None:
        """Flask: wrap ``app.wsgi_app`` and register as ``app.extensions["pixelmirror"]``."""
        app.wsgi_app = self.wsgi(app.wsgi_app)
        app.extensions["pixelmirror"] = self

    def asgi(self, app: ASGIApp) -> PixelMirrorMiddleware:
        """Wrap an ASGI app: ``app = mirror.asgi(app)``."""
        from pixelmirror.asgi import PixelMirrorMiddleware

        return PixelMirrorMiddleware(app, mirror=self)

    @property
    def identity(self) -> Identity | None:
        """Visitor identity, made when a middleware is set up (it needs the signing key).

        None without a pixel id or accounts: the middleware then passes every page through
        untouched.
        """
        if self._identity is None and self._accounts is not None:
            self._identity = Identity(self.config, consent=self._consent, is_bot=self._is_bot)
        return self._identity

    def prepare_web(self) -> None:
        """Called by the middleware at start-up: a missing signing key fails here, not on a
        request, and a middleware without a pixel says so once."""
        if self.identity is None:
            logger.warning(
                "pixelmirror: no PIXELMIRROR_PIXEL_ID and no accounts: pages pass through untouched"
            )

    def is_beacon(self, facts: RequestFacts) -> bool:
        """Whether this request is for the beacon endpoint (only served with a pixel id)."""
        return facts.path == self.config.beacon_path and self.identity is not None

    def begin(self, facts: RequestFacts) -> Visit | None:
        """Start a request's visit, or None when it gets no pixel (no pixel id, no consent,
        a crawler)."""
        account = self._account(facts)
        if account is None:
            return None
        assert self._identity is not None
        visitor = self._identity.resolve(facts)
        if visitor is None:
            # Inline mode: no consent or a crawler gets the page untouched. Beacon mode: every
            # visitor gets the same bytes (a shared cache could not tell them apart) and the
            # beacon refuses them instead.
            return Visit(facts, None, account) if self.config.mode == "beacon" else None
        return Visit(facts, visitor, account, carried=self._identity.read_carried(facts))

    def _account(self, facts: RequestFacts) -> Account | None:
        """The request's account, if it has one and its own consent gate lets it through."""
        if self.identity is None or self._accounts is None:
            return None
        account = self._accounts(facts)
        if account is None or account.consent is None:
            return account
        try:
            return account if account.consent(facts) else None
        except Exception:
            logger.warning("pixelmirror: an account's consent gate failed; no pixel", exc_info=True)
            return None

    def plan(
        self, visit: Visit, method: str, status: int, headers: Sequence[tuple[str, str]]
    ) -> Plan | None:
        """Decide what the response gets, once its status and headers are known."""
        identity = self.identity
        assert identity is not None
        account, visitor = visit.account, visit.visitor
        tracked = visit.tracked_for(status)
        announce = self._announce(visit, tracked, status) if tracked else None
        if not should_inject(method, status, headers):
            return announce
        page_options: dict[str, Any] = {
            "pixel_ids": account.pixel_ids,
            "nonce": self._csp_nonce(visit.facts, headers),
            "agent": account.partner_agent or self.config.partner_agent,
            "ldu": self._ldu(account),
            "auto_config": self.config.auto_config,
            "beacon_path": self.config.beacon_path,
        }
        if self.config.mode == "beacon":
            # The same bytes for every visitor. Events the view tracked ride to the beacon in
            # the carry cookie, so this page (and only such a page) sets cookies.
            gated = self._consent is not None or self.config.consent_cookie is not None
            snippet = render_beacon_snippet(
                gated=gated or account.consent is not None, **page_options
            )
            if announce is None:
                return Plan(snippet=snippet, private=False)
            return Plan(snippet=snippet, cookies=self._carry(visit, tracked), fallback=announce)
        assert visitor is not None
        events = [BrowserEvent("PageView", visit.page_event_id)]
        events += [
            BrowserEvent(
                str(c["name"]),
                str(c["event_id"]),
                _mapping(c.get("custom_data")),
                _pixel(c.get("pixel_id")),
            )
            for c in visit.carried
        ]
        events += [
            BrowserEvent(e.event_name, e.event_id, e.custom_data, e.pixel_id) for e in tracked
        ]
        snippet = render_snippet(external_id=visitor.external_id, events=events, **page_options)
        cookies = visitor.set_cookies
        if visit.carried:
            cookies += (identity.clear_carry_cookie(),)
        if logger.isEnabledFor(logging.DEBUG):
            fired = ", ".join(f"{e.name} eventID={e.event_id}" for e in events)
            logger.debug("pixelmirror: browser -> %s %s", visit.facts.path, fired)
        return Plan(snippet=snippet, cookies=cookies, fallback=announce)

    def _announce(self, visit: Visit, tracked: Sequence[TrackedEvent], status: int) -> Plan:
        """How a response that carries no snippet hands its tracked events to the browser."""
        assert visit.visitor is not None
        if status in _REDIRECTS:
            # POST-redirect-GET: the browser copies fire on the next page, with the same ids.
            return Plan(cookies=self._carry(visit, tracked))
        announced = [_announced(e.event_name, e.event_id, pixel_id=e.pixel_id) for e in tracked]
        header = (EVENTS_HEADER, json.dumps(announced))
        return Plan(cookies=visit.visitor.set_cookies, headers=(header,))

    def _carry(self, visit: Visit, tracked: Sequence[TrackedEvent]) -> tuple[str, ...]:
        """The visitor's cookies plus the signed cookie carrying browser copies onward."""
        assert self.identity is not None
        carry: list[Mapping[str, object]] = [*visit.carried]
        carry += (
            {
                "name": e.event_name,
                "event_id": e.event_id,
                "custom_data": e.custom_data,
                **({"pixel_id": e.pixel_id} if e.pixel_id else {}),
            }
            for e in tracked
        )
        assert visit.visitor is not None
        return (*visit.visitor.set_cookies, self.identity.carry_cookie(carry))

    def _ldu(self, account: Account) -> bool:
        return self.config.ldu if account.ldu is None else account.ldu

    def answer_beacon(self, facts: RequestFacts, body: bytes) -> BeaconAnswer:
        """Answer the page's beacon: mint ids, mirror the server copies, say what to fire.

        The endpoint is a public write path: only same-origin requests from consenting
        visitors that are not crawlers, for allowed event names, within rate limits, get an
        answer; anything else gets a 4xx with a short reason and never reaches the outbox.
        """
        identity = self.identity
        assert identity is not None
        try:
            origin = origin_of(identity.page_url(facts)) or ""
            check_origin(facts, origin)
            asked = parse_request(body, origin=origin, allowed=self._beacon_allowed)
            page = urlsplit(asked.page_url)
            headers = {**facts.headers, "referer": asked.referrer or ""}
            page_facts = replace(
                facts, method="GET", path=page.path or "/", query=page.query, headers=headers
            )
            account = self._account(page_facts)
            visitor = identity.resolve(page_facts) if account is not None else None
            if account is None or visitor is None:
                raise BeaconRefused(403, "no pixel here, no consent, or a crawler")
            cost = len(asked.events)
            if not self._beacon_visitors.allow(visitor.visitor_id, cost) or not (
                self._beacon_ips.allow(ip_budget_key(visitor.client_ip), cost)
            ):
                raise BeaconRefused(429, "too many beacon events; slow down")
        except BeaconRefused as refused:
            return BeaconAnswer(refused.status, refused.reason.encode(), content_type="text/plain")
        visit = Visit(page_facts, visitor, account)
        fired = []
        for name, custom_data in asked.events:
            event = TrackedEvent(name, custom_data=dict(custom_data))
            if name != "PageView" or self.config.pageview:
                visit.tracked.append(event)
            fired.append(_announced(name, event.event_id, custom_data))
        self.finish(visit, 200)
        # What the server decided earlier (a purchase behind a redirect) fires after the page's
        # own events, as it would have in inline mode.
        carried = identity.read_carried(facts)
        fired += (
            _announced(
                str(c["name"]),
                str(c["event_id"]),
                _mapping(c.get("custom_data")),
                _pixel(c.get("pixel_id")),
            )
            for c in carried
        )
        cookies = visitor.set_cookies + ((identity.clear_carry_cookie(),) if carried else ())
        answer = {"external_id": visitor.external_id, "events": fired}
        return BeaconAnswer(200, json.dumps(answer).encode(), cookies=cookies)

    def finish(self, visit: Visit, status: int) -> None:
        """Mirror the request's events to the outbox, once per pixel, after the response."""
        if visit.visitor is None:  # beacon mode, no consent or a crawler: nothing to mirror
            return
        tracked = visit.tracked_for(status)
        # In beacon mode the page's PageView comes back through the beacon.
        pageview = visit.injected and self.config.pageview and self.config.mode == "inline"
        if not tracked and not pageview:
            return
        user_data = self._request_user_data(visit)
        copies: list[tuple[str, str, Mapping[str, object], Mapping[str, object], str | None]] = []
        if pageview:
            copies.append(("PageView", visit.page_event_id, user_data, {}, None))
        for event in tracked:
            copies.append(
                (
                    event.event_name,
                    event.event_id,
                    _merge_user_data(user_data, event.user_data),
                    {**event.custom_data, **event.server_only},
                    event.pixel_id,
                )
            )
        page_fields = self._page_fields(visit)  # once per request, not per copy
        events = [
            self._website_event(page_fields, pixel_id, name, event_id, user, custom)
            for name, event_id, user, custom, only in copies
            for pixel_id in ((only,) if only else visit.account.pixel_ids)
        ]
        self.enqueue([event for event in events if event is not None])

    def _request_user_data(self, visit: Visit) -> dict[str, object]:
        visitor = visit.visitor
        assert visitor is not None
        user_data: dict[str, object] = {
            "external_id": visitor.external_id,
            "client_ip_address": visitor.client_ip,
            "client_user_agent": visitor.user_agent,
            "fbp": visitor.fbp,
            "fbc": visitor.fbc,
        }
        if self._identify is not None:
            try:
                found = self._identify(visit.facts)
            except Exception:
                logger.exception("pixelmirror: the identify hook failed; events go without it")
            else:
                user_data = _merge_user_data(user_data, found or {})
        return user_data

    def _page_fields(self, visit: Visit) -> dict[str, Any]:
        """What every server copy of one request shares: the page, its referrer, options."""
        assert self.identity is not None
        account = visit.account
        referrer = visit.facts.headers.get("referer", "")
        return {
            "action_source": "website",
            "event_source_url": self.identity.page_url(visit.facts),
            "referrer_url": referrer if referrer.startswith(("http://", "https://")) else None,
            "data_processing_options": ["LDU"] if self._ldu(account) else None,
            "test_event_code": account.test_event_code or self.config.test_event_code,
        }

    def _website_event(
        self,
        page_fields: Mapping[str, Any],
        pixel_id: str,
        event_name: str,
        event_id: str,
        user_data: Mapping[str, object],
        custom_data: Mapping[str, object],
    ) -> ServerEvent | None:
        try:
            return ServerEvent.create(
                event_name,
                pixel_id=pixel_id,
                event_id=event_id,
                user_data=user_data,
                custom_data=custom_data,
                **page_fields,
            )
        except ValueError as exc:
            logger.error("pixelmirror: %s %s not mirrored: %s", event_name, event_id, exc)
            with self._counts_lock:
                self._invalid += 1
            return None

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
        with self._counts_lock:
            queued = dict(self._queued)
            dry_run, invalid = self._dry_run, self._invalid
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
            dropped=self.outbox.dropped + (handoff.drops.total if handoff else 0),
            invalid=invalid,
            sent=delivered.sent,
            retried=delivered.retried,
            dead=counts.dead if counts else None,
            pending=counts.pending if counts else None,
            in_flight=counts.in_flight if counts else None,
            paused_pixels=dispatcher.paused_pixels if dispatcher else (),
            pixels=pixels,
            handoff=handoff.held if handoff else 0,
            outbox_error=self._outbox_error or (handoff.error if handoff else None),
        )

    def _outbox_failed(self, doing: str, exc: Exception) -> None:
        """Note an unavailable outbox; logged when the reason changes, not on every call."""
        error = f"{type(exc).__name__}: {exc}"
        if error != self._outbox_error:
            logger.warning(
                "pixelmirror outbox %s unavailable (%s): %s", self.outbox.url, doing, error
            )
        self._outbox_error = error

    def _outbox_answered(self) -> None:
        if self._outbox_error is not None:
            logger.warning("pixelmirror outbox %s answers again", self.outbox.url)
            self._outbox_error = None

    def check(
        self, pixel_id: str | None = None, *, test_event_code: str | None = None
    ) -> CheckResult:
        """Send one test event now and report Meta's answer: "test this connection".

        The event goes straight to Meta (not through the outbox) as ``PixelMirrorCheck``
        with the test event code, so it shows in Events Manager > Test events. Success ends
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
                hint=meta.advice(fault_of(exc), exc.code, exc.subcode, exc.message),
            )
        if self.dispatcher is not None:  # what Meta just took, the paused pixel may send
            self.dispatcher.resume(pixel, "a check of the connection succeeded")
        return CheckResult(
            ok=True,
            pixel_id=pixel,
            events_received=answer.events_received,
            fbtrace_id=answer.fbtrace_id,
            messages=tuple(answer.messages),
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
        _live_mirrors.discard(self)
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
            logger.warning("pixelmirror closing; could not count unsent events: %s", exc)
            counts = OutboxCounts(0, 0, 0, 0)
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
        try:
            self.outbox.close()
        except Exception:
            logger.exception("pixelmirror: closing the outbox %s failed", self.outbox.url)

    def _after_fork(self) -> None:
        """In a forked child: fresh outbox connections, an empty handoff with its own writer,
        and a dispatcher of its own."""
        try:
            self.outbox.after_fork()
        except Exception:  # the child's own handoff and dispatcher must still be set up
            logger.exception("pixelmirror: the outbox could not reopen in a forked child")
        if self.handoff is not None:
            self.handoff.after_fork()
        self._counts_lock = threading.Lock()
        self._queued, self._dry_run = Counter(), 0
        if self.dispatcher is not None and self.client is not None:
            self.client = GraphClient.from_config(
                self.config, tokens=self._tokens, transport=self._transport
            )
            self.dispatcher = Dispatcher.from_config(self.config, self.outbox, self.client)
            self.dispatcher.start()


def _announced(
    name: str,
    event_id: str,
    custom_data: Mapping[str, object] | None = None,
    pixel_id: str | None = None,
) -> dict[str, object]:
    """An event for the page's JavaScript to fire (``window.pixelmirror.fire``)."""
    announced: dict[str, object] = {"event": name, "eventID": event_id}
    if custom_data:
        announced["custom_data"] = custom_data
    if pixel_id:
        announced["pixel_id"] = pixel_id
    return announced


def _pixel(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _merge_user_data(base: Mapping[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    """``extra`` wins, except that external ids add up: the visitor's and the app's own."""
    merged = {**base, **extra}
    if "external_id" in extra and base.get("external_id"):
        ids = [*_as_list(base["external_id"]), *_as_list(extra["external_id"])]
        merged["external_id"] = [i for i in ids if i]
    return merged


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# Process-wide hooks: flush at exit, restart dispatchers in forked children (gunicorn preload).
_live_mirrors: weakref.WeakSet[PixelMirror] = weakref.WeakSet()


def _close_all() -> None:
    for mirror in list(_live_mirrors):  # one failing mirror must not keep the rest open
        try:
            mirror.close()
        except Exception:
            logger.exception("pixelmirror: closing %r at exit failed", mirror)


def _after_fork_in_child() -> None:
    for mirror in list(_live_mirrors):
        mirror._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
