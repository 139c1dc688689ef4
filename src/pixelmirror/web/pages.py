"""``Pages``: every rule about which events a page fires in the browser and mirrors to CAPI.

Built from the pieces it needs: the settings, the visitor's :class:`Identity`, the site's
accounts, and ``enqueue``, the function that takes built server events. It never sees the
:class:`~pixelmirror.mirror.PixelMirror` that owns it, and no framework: the adapters hand it
:class:`RequestFacts` and drive one :class:`~pixelmirror.web.request.PageRequest` per page.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from pixelmirror.accounts import Account, AccountSource
from pixelmirror.beacon import (
    MAX_BODY,
    BeaconRefused,
    RateLimiter,
    check_origin,
    ip_budget_key,
    origin_of,
    parse_request,
)
from pixelmirror.config import Config
from pixelmirror.events import BrowserEvent, ServerEvent, json_default
from pixelmirror.facts import RequestFacts
from pixelmirror.identity import Identity
from pixelmirror.meta import LIMITED_DATA_USE
from pixelmirror.pageviews import page_views, straight_page_views
from pixelmirror.snippet import page_view_snippet, render_beacon_snippet, render_snippet
from pixelmirror.tracking import TrackedEvent, Visit
from pixelmirror.web.carry import Carry
from pixelmirror.web.headers import csp_nonce, page_policies, should_inject
from pixelmirror.web.request import PageRequest
from pixelmirror.web.response import (
    EVENTS_HEADER,
    BeaconAnswer,
    NonceSource,
    Plan,
    nonce_from_csp,
)

logger = logging.getLogger("pixelmirror.web")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Identify = Callable[[RequestFacts], "Mapping[str, object] | None"]
Enqueue = Callable[[Sequence[ServerEvent]], None]


class Pages:
    """The web rules of one site: what a page gets, what the beacon answers, what is mirrored.

    ``identity`` and ``accounts`` None (no pixel id and no accounts): every request passes
    through untouched, which is said once, here. ``identify(facts)`` returns user_data that
    enriches every event of a request; ``csp_nonce`` finds the nonce for the injected script;
    ``consent_gated``: the site asks for consent (a page without it gets the consent-pending
    snippet, and the beacon snippet fires nothing without the beacon's answer).
    """

    def __init__(
        self,
        config: Config,
        *,
        identity: Identity | None,
        accounts: AccountSource | None,
        enqueue: Enqueue,
        identify: Identify | None = None,
        csp_nonce: NonceSource = nonce_from_csp,
        consent_gated: bool = False,
    ) -> None:
        self.config = config
        self.identity = identity if accounts is not None else None
        self._accounts = accounts
        self._enqueue = enqueue
        self._identify = identify
        self._csp_nonce = csp_nonce
        self._gated = consent_gated or config.consent_cookie is not None or config.honor_gpc
        self.carry = Carry(config) if self.identity is not None else None
        self._mirror_pageviews = config.pageview and config.mode == "inline"
        self._beacon_allowed = frozenset(config.beacon_events) | {"PageView"}
        self._beacon_visitors = RateLimiter(config.beacon_rate)
        self._beacon_ips = RateLimiter(5 * config.beacon_rate)
        self._lock = threading.Lock()
        #: Server copies the app's data made invalid (a text ``value``, say); each logged.
        self.invalid = 0
        if self.identity is None:
            logger.warning("no PIXELMIRROR_PIXEL_ID and no accounts: pages pass through untouched")

    # -- the adapter's entry points ---------------------------------------------------------

    def is_beacon(self, facts: RequestFacts) -> bool:
        """Whether this request is for the beacon endpoint (only served with a pixel)."""
        return facts.path == self.config.beacon_path and self.identity is not None

    def start(self, facts: RequestFacts) -> PageRequest | None:
        """The request's page, or None when it passes through untouched (no pixel, a
        crawler, no consent on a site that does not ask for it, or a failure here, which is
        logged)."""
        try:
            visit = self.begin(facts)
        except Exception:
            logger.exception("could not read the request; passing it through")
            return None
        return None if visit is None else PageRequest(self, visit)

    def beacon(self, facts: RequestFacts, body: bytes) -> BeaconAnswer:
        """:meth:`answer_beacon`, or a 500 when it fails (logged): never raises."""
        try:
            return self.answer_beacon(facts, body)
        except Exception:
            logger.exception("the beacon failed")
            return BeaconAnswer.failed()

    # -- the rules ----------------------------------------------------------------------------

    def begin(self, facts: RequestFacts) -> Visit | None:
        """Start a request's visit, or None when it gets no pixel (no pixel id, a crawler, no
        consent on a site that does not ask for it)."""
        identity, accounts, carry = self.identity, self._accounts, self.carry
        if identity is None or accounts is None:
            return None
        account = accounts(facts)  # what _account asks, without its call
        if account is None:
            return None
        assert carry is not None  # made with the identity
        # Most accounts have no gate of their own: no call to ask it.
        if account.consent is None or self._account_consents(account, facts):
            visitor = identity.resolve(facts)
            if visitor is not None:
                return Visit(facts, visitor, account, carried=carry.read(facts))
        # Beacon mode: every visitor gets the same bytes (a shared cache could not tell them
        # apart) and the beacon refuses them instead. Inline mode: a visitor who has not
        # consented yet gets the consent-pending page, the same for all of them; a crawler
        # (and anyone on a site that asks no consent) gets the page untouched.
        if self.config.mode == "beacon" or (
            self._gated_for(account) and not identity.is_crawler(facts)
        ):
            return Visit(facts, None, account)
        return None

    def _account(self, facts: RequestFacts) -> Account | None:
        """The request's account, if it has one (consented or not)."""
        if self.identity is None or self._accounts is None:
            return None
        return self._accounts(facts)

    @staticmethod
    def _account_consents(account: Account, facts: RequestFacts) -> bool:
        """Whether the account's own consent gate, if it has one, lets the request through."""
        if account.consent is None:
            return True
        try:
            return bool(account.consent(facts))
        except Exception:
            logger.warning("an account's consent gate failed; no pixel", exc_info=True)
            return False

    def _gated_for(self, account: Account) -> bool:
        """Whether the account's pages ask for consent (the site's rule or its own gate)."""
        return self._gated or account.consent is not None

    def plan(self, visit: Visit, status: int, headers: Sequence[tuple[str, str]]) -> Plan | None:
        """Decide what the response gets, once its status and headers are known."""
        account, visitor, config, facts = visit.account, visit.visitor, self.config, visit.facts
        tracked = [event.browser() for event in visit.tracked_for(status)] if visit.tracked else []
        announce = self._announce(visit, tracked, status) if tracked else None
        default_nonce = self._csp_nonce is nonce_from_csp
        if default_nonce:  # one pass over the headers answers both
            policies = page_policies(facts.method, status, headers)
            injectable = policies is not None
            nonce = csp_nonce(policies) if policies else None
        else:
            injectable, nonce = should_inject(facts.method, status, headers), None
        if tracked or (injectable and visitor is not None and config.mode == "inline"):
            # Events will be mirrored: ask the identify hook now, while the app's call (and a
            # framework's request context, Flask's session) is still there.
            self.identify(visit)
        if not injectable:
            return announce
        if not default_nonce:
            nonce = self._csp_nonce(facts, headers)
        agent = account.partner_agent or config.partner_agent
        ldu = self._ldu(account)
        if config.mode == "beacon" or visitor is None:
            # Beacon mode: the same bytes for every visitor. Events the view tracked ride to
            # the beacon in the carry cookie, so this page (and only such a page) sets
            # cookies. Consent pending: the same bytes for every such visitor, no id, no
            # cookie, and the app's caching kept; the banner's consent(true) counts the page
            # later.
            beacon = config.mode == "beacon"
            snippet = render_beacon_snippet(
                pixel_ids=account.pixel_ids,
                beacon_path=config.beacon_path,
                nonce=nonce,
                agent=agent,
                ldu=ldu,
                auto_config=config.auto_config,
                gated=beacon and self._gated_for(account),
                gpc=config.honor_gpc,
                pending=not beacon,
            )
            if not beacon or announce is None:
                return Plan(snippet=snippet, private=False)
            return Plan(snippet=snippet, cookies=self._carry(visit, tracked), fallback=announce)
        assert self.carry is not None
        carried, page_view = visit.carried, visit.page_event_id
        filled = None
        if not carried and not tracked:  # most pages: their PageView alone, from a template
            filled = page_view_snippet(
                pixel_ids=account.pixel_ids,
                external_id=visitor.external_id,
                event_id=page_view,
                nonce=nonce,
                agent=agent,
                ldu=ldu,
                auto_config=config.auto_config,
                beacon_path=config.beacon_path,
            )
        snippet = filled or render_snippet(
            pixel_ids=account.pixel_ids,
            external_id=visitor.external_id,
            events=[BrowserEvent("PageView", page_view), *carried, *tracked],
            nonce=nonce,
            agent=agent,
            ldu=ldu,
            auto_config=config.auto_config,
            beacon_path=config.beacon_path,
        )
        cookies = visitor.set_cookies
        if carried:
            cookies += (self.carry.clear,)
        fired = (*carried, *tracked)
        return Plan(
            snippet=snippet, cookies=cookies, fallback=announce, page_view=page_view, fired=fired
        )

    def _announce(self, visit: Visit, tracked: Sequence[BrowserEvent], status: int) -> Plan:
        """How a response that carries no snippet hands its tracked events to the browser."""
        assert visit.visitor is not None
        if status in _REDIRECTS:
            # POST-redirect-GET: the browser copies fire on the next page, with the same ids.
            return Plan(cookies=self._carry(visit, tracked))
        announced = [event.announced(with_data=False) for event in tracked]
        header = (EVENTS_HEADER, json.dumps(announced, default=json_default))
        return Plan(cookies=visit.visitor.set_cookies, headers=(header,))

    def _carry(self, visit: Visit, tracked: Sequence[BrowserEvent]) -> tuple[str, ...]:
        """The visitor's cookies plus the signed cookie carrying browser copies onward."""
        assert visit.visitor is not None
        assert self.carry is not None
        return (*visit.visitor.set_cookies, self.carry.cookie([*visit.carried, *tracked]))

    def _ldu(self, account: Account) -> bool:
        return self.config.ldu if account.ldu is None else account.ldu

    def answer_beacon(self, facts: RequestFacts, body: bytes) -> BeaconAnswer:
        """Answer the page's beacon: mint ids, mirror the server copies, say what to fire.

        The endpoint is a public write path: only same-origin requests from consenting
        visitors that are not crawlers, for allowed event names, within rate limits, get an
        answer; anything else gets a 4xx with a short reason and never reaches the outbox.
        """
        identity, carry = self.identity, self.carry
        assert identity is not None
        assert carry is not None
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
            consents = account is not None and self._account_consents(account, page_facts)
            visitor = identity.resolve(page_facts) if consents else None
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
            fired.append(event.browser().announced())
        self.finish(visit, 200, injected=False)
        # What the server decided earlier (a purchase behind a redirect) fires after the page's
        # own events, as it would have in inline mode.
        carried = carry.read(facts)
        fired += (event.announced() for event in carried)
        cookies = visitor.set_cookies + ((carry.clear,) if carried else ())
        answer = {"external_id": visitor.external_id, "events": fired}
        body = json.dumps(answer, default=json_default).encode()
        return BeaconAnswer(200, body, cookies=cookies)

    def finish(self, visit: Visit, status: int, *, injected: bool) -> None:
        """Mirror the request's events to the outbox, once per pixel, after the response;
        ``injected``: the page got the snippet, so its PageView is mirrored too."""
        visitor = visit.visitor
        if visitor is None:  # beacon mode, no consent or a crawler: nothing to mirror
            return
        tracked = visit.tracked_for(status) if visit.tracked else ()
        # In beacon mode the page's PageView comes back through the beacon.
        pageview = injected and self._mirror_pageviews
        if not tracked and not pageview:
            return
        if visit.identified is None:
            self.identify(visit)
        fields = self._page_fields(visit)  # once per request, not per copy
        pixels = visit.account.pixel_ids
        events: list[ServerEvent] = []
        if pageview:
            # The visitor's own user data alone has its wire form made already.
            wire = None if visit.identified else visitor.wire
            events = self._page_views(fields, pixels, visit, wire)
        if tracked:
            user_data = self._request_user_data(visit)
            for event in tracked:
                events += self._copies(
                    fields,
                    (event.pixel_id,) if event.pixel_id else pixels,
                    event.event_name,
                    event.event_id,
                    _merge_user_data(user_data, event.user_data),
                    {**event.custom_data, **event.server_only},
                )
        self._enqueue(events)

    def identify(self, visit: Visit) -> None:
        """Run the identify hook for the visit, once; a failure is logged and counts as
        nothing found. Called as the response starts, inside the app's call, and else (the
        beacon, a response that never started) when its events are mirrored."""
        if visit.identified is not None:
            return
        visit.identified = {}
        if self._identify is None:
            return
        try:
            found = self._identify(visit.facts)
        except Exception:
            logger.exception("the identify hook failed; events go without it")
        else:
            visit.identified = dict(found or {})

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
        self.identify(visit)
        return _merge_user_data(user_data, visit.identified) if visit.identified else user_data

    def _page_fields(self, visit: Visit) -> _PageFields:
        """What every server copy of one request shares: the page, its referrer, options."""
        assert self.identity is not None
        account = visit.account
        config = self.config
        referrer = visit.facts.headers.get("referer")
        return (
            self.identity.page_url(visit.facts),
            referrer if referrer is not None and referrer.startswith(_HTTP) else None,
            [LIMITED_DATA_USE] if self._ldu(account) else None,
            account.test_event_code or config.test_event_code,
            config.default_country,
        )

    def _page_views(
        self,
        page_fields: _PageFields,
        pixel_ids: Sequence[str],
        visit: Visit,
        user_wire: tuple[str, tuple[str, ...]] | None,
    ) -> list[ServerEvent]:
        """The page's PageView, one per pixel (what :meth:`_copies` makes, on a shorter road).
        ``user_wire``: the visitor's wire user data, when the request adds none to it; then
        the usual page makes no user data dict."""
        url, referrer, options, code, country = page_fields
        event_id = visit.page_event_id
        try:
            events = straight_page_views(
                pixel_ids, event_id, user_wire, None, url, referrer, options, code, country
            )
            if events is None:
                events = page_views(
                    pixel_ids,
                    event_id=event_id,
                    user_data=self._request_user_data(visit),
                    user_wire=user_wire,
                    event_source_url=url,
                    referrer_url=referrer,
                    data_processing_options=options,
                    test_event_code=code,
                    default_country=country,
                )
            return events
        except ValueError as exc:
            logger.error("PageView %s not mirrored: %s", event_id, exc)
            with self._lock:
                self.invalid += len(pixel_ids)
            return []

    def _copies(
        self,
        page_fields: _PageFields,
        pixel_ids: Sequence[str],
        event_name: str,
        event_id: str,
        user_data: Mapping[str, object],
        custom_data: Mapping[str, object],
    ) -> list[ServerEvent]:
        """The server copies of one event, one per pixel; none if the app's data is invalid."""
        url, referrer, options, code, country = page_fields
        try:
            return [
                ServerEvent.create(
                    event_name,
                    pixel_id=pixel_id,
                    action_source="website",
                    event_id=event_id,
                    user_data=user_data,
                    custom_data=custom_data,
                    event_source_url=url,
                    referrer_url=referrer,
                    data_processing_options=options,
                    test_event_code=code,
                    default_country=country,
                )
                for pixel_id in pixel_ids
            ]
        except ValueError as exc:
            logger.error("%s %s not mirrored: %s", event_name, event_id, exc)
            with self._lock:
                self.invalid += len(pixel_ids)
            return []


#: What every server copy of one request shares: the page's URL, its referrer (an http(s)
#: one), the data processing options, the test event code and the default country.
_PageFields = tuple[str, str | None, list[str] | None, str | None, str | None]
_HTTP = ("http://", "https://")


def _merge_user_data(base: Mapping[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    """``extra`` wins, except that external ids add up: the visitor's and the app's own."""
    merged = {**base, **extra}
    if "external_id" in extra and base.get("external_id"):
        ids = [*_as_list(base["external_id"]), *_as_list(extra["external_id"])]
        merged["external_id"] = [i for i in ids if i]
    return merged


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


__all__ = ["MAX_BODY", "Identify", "PageRequest", "Pages", "RequestFacts"]
