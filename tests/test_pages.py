"""Tests for pixelmirror.web.pages: the web rules, driven with hand-built RequestFacts.

No server and no framework: a :class:`Pages` is built from its pieces, its ``enqueue`` is a
list, and a page is played through the :class:`PageRequest` protocol an adapter drives.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from conftest import PIXEL, SECRET
from pixelmirror import EVENTS_HEADER, current_event, track
from pixelmirror.accounts import Account
from pixelmirror.config import Config
from pixelmirror.events import ServerEvent
from pixelmirror.facts import RequestFacts
from pixelmirror.identity import Identity
from pixelmirror.snippet import render_beacon_snippet
from pixelmirror.web.pages import Pages
from pixelmirror.web.request import PageRequest
from webkit import CHROME, HTML, browser_events

OTHER_PIXEL = "2222222222"
JSON = [("Content-Type", "application/json")]
PAGE = [("Content-Type", "text/html; charset=utf-8")]


class Site:
    """A Pages and what it enqueued."""

    def __init__(
        self,
        *,
        identify: Callable[[RequestFacts], Mapping[str, object] | None] | None = None,
        pixels: tuple[str, ...] = (PIXEL,),
        account_consent: Callable[[RequestFacts], bool] | None = None,
        **settings: Any,
    ) -> None:
        options: dict[str, Any] = {"secret_key": (SECRET,), "cookie_secure": False}
        config = Config(pixel_id=pixels[0], **{**options, **settings})
        account = Account(pixels, consent=account_consent)
        self.mirrored: list[ServerEvent] = []
        self.pages = Pages(
            config,
            identity=Identity(config),
            accounts=lambda facts: account,
            enqueue=self.mirrored.extend,
            identify=identify,
        )

    def serve(
        self,
        facts: RequestFacts,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = HTML,
        view: Callable[[], object] | None = None,
    ) -> tuple[list[tuple[str, str]], bytes]:
        """Play one response through the adapter protocol: the headers and body that go out."""
        request = self.pages.start(facts)
        assert request is not None
        return play(request, status, PAGE if headers is None else headers, body, view)


def play(
    request: PageRequest,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    view: Callable[[], object] | None = None,
) -> tuple[list[tuple[str, str]], bytes]:
    with request:
        if view is not None:
            view()
    start = request.respond(status, headers)
    if start is None:
        start, body = request.feed(body, more=False)
        assert start is not None
    request.done()
    return start, body


def facts(
    path: str = "/",
    *,
    method: str = "GET",
    cookies: Mapping[str, str] | None = None,
    **headers: str,
) -> RequestFacts:
    sent = {"user-agent": CHROME, "host": "shop.example", **headers}
    if cookies:
        sent["cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return RequestFacts(
        method=method,
        scheme="http",
        host="shop.example",
        path=path,
        query="",
        headers=sent,
        peer="203.0.113.9",
    )


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def jar(headers: list[tuple[str, str]]) -> dict[str, str]:
    pairs = (cookie.split(";")[0].partition("=") for cookie in values(headers, "Set-Cookie"))
    return {name: value for name, _, value in pairs}


def tracking(
    name: str, *, pixel_id: str | None = None, when: Callable[[int], bool] | None = None
) -> Callable[..., Callable[[], object]]:
    """A view that tracks ``name`` and fills its event with the keywords given."""

    def view_with(**data: Mapping[str, object]) -> Callable[[], object]:
        @track(name, pixel_id=pixel_id, when=when)
        def view() -> None:
            event = current_event()
            for part, fields in data.items():
                getattr(event, part).update(fields)

        return view

    return view_with


# -- which requests get a page ----------------------------------------------------------------


CRAWLERS = [
    pytest.param({"user-agent": "facebookexternalhit/1.1"}, id="meta-crawler"),
    pytest.param({"user-agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}, id="bot"),
]


@pytest.mark.parametrize("headers", CRAWLERS)
@pytest.mark.parametrize(
    "settings", [{}, {"consent_cookie": "consent=yes"}], ids=["open-site", "gated-site"]
)
def test_crawlers_get_no_page_request(settings: dict[str, Any], headers: dict[str, str]) -> None:
    assert Site(**settings).pages.start(facts(**headers)) is None


def test_global_privacy_control_counts_only_when_honoured() -> None:
    gpc = facts(**{"sec-gpc": "1"})
    site = Site()
    site.serve(gpc)
    assert [e.event_name for e in site.mirrored] == ["PageView"]
    honouring = Site(honor_gpc=True)
    _, page = honouring.serve(gpc)
    assert b'"pending":true' in page
    assert honouring.mirrored == []


# Every way a site asks for consent, and a request each one refuses: the site setting, the
# account's own gate, and Global Privacy Control.
GATES = [
    pytest.param({"consent_cookie": "consent=yes"}, {}, id="cookie-missing"),
    pytest.param({"consent_cookie": "consent=yes"}, {"consent": "no"}, id="cookie-refused"),
    pytest.param({"account_consent": lambda facts: "consent" in facts.cookies}, {}, id="account"),
    pytest.param({"honor_gpc": True, "_gpc": True}, {"consent": "yes"}, id="gpc"),
]


def gated(settings: dict[str, Any]) -> tuple[Site, dict[str, str]]:
    """A gated site and the headers its refused requests carry."""
    settings = dict(settings)
    headers = {"sec-gpc": "1"} if settings.pop("_gpc", False) else {}
    if settings.get("honor_gpc"):
        settings["consent_cookie"] = "consent=yes"
    return Site(**settings), headers


@pytest.mark.parametrize(("settings", "cookies"), GATES)
def test_a_page_without_consent_is_pending_the_same_for_all_with_no_id_or_cookie(
    settings: dict[str, Any], cookies: dict[str, str]
) -> None:
    site, headers = gated(settings)
    cached = [("Content-Type", "text/html"), ("Cache-Control", "public, max-age=60")]
    ann = site.serve(facts(cookies=cookies, **headers), headers=cached)
    bob = site.serve(
        facts(cookies={**cookies, "_pm_vid": "x", "_fbp": "fb.1.1.1"}, **headers),
        headers=cached,
    )
    assert ann == bob
    out_headers, page = ann
    assert values(out_headers, "Set-Cookie") == []
    assert values(out_headers, "Cache-Control") == ["public, max-age=60"]
    # The snippet is a function of the site's settings alone: nothing of the request in it.
    gpc = bool(settings.get("honor_gpc"))
    assert render_beacon_snippet(pixel_ids=[PIXEL], gpc=gpc, pending=True) in page
    assert browser_events(page) == []
    assert b"<noscript>" not in page
    assert site.mirrored == []


@pytest.mark.parametrize(("settings", "cookies"), GATES)
def test_a_pending_page_ignores_the_views_events(
    settings: dict[str, Any], cookies: dict[str, str]
) -> None:
    site, headers = gated(settings)
    view = tracking("Purchase")(custom_data={"value": 5, "currency": "EUR"})
    out_headers, _ = site.serve(facts("/buy", cookies=cookies, **headers), view=view)
    assert values(out_headers, "Set-Cookie") == []
    assert site.mirrored == []


def test_consent_given_on_a_pending_page_counts_it_once_through_the_beacon() -> None:
    site = Site(consent_cookie="consent=yes")
    _, page = site.serve(facts("/shoes"))
    assert b'"pending":true' in page
    ask = {"url": "http://shop.example/shoes", "events": [{"event": "PageView"}]}
    refused = site.pages.beacon(*beacon_facts(ask))
    assert refused.status == 403
    assert site.mirrored == []
    answer = site.pages.beacon(*beacon_facts(ask, consent="yes"))
    assert answer.status == 200
    answered = json.loads(answer.body)
    (pageview,) = site.mirrored
    assert answered["events"] == [{"event": "PageView", "eventID": pageview.event_id}]
    assert pageview.event_name == "PageView"
    assert json.loads(pageview.payload)["event_source_url"] == "http://shop.example/shoes"
    assert "_pm_vid" in {cookie.split("=")[0] for cookie in answer.cookies}


def test_an_account_gate_refuses_the_beacon_too() -> None:
    site = Site(account_consent=lambda facts: "consent" in facts.cookies)
    ask = {"url": "http://shop.example/", "events": [{"event": "PageView"}]}
    assert site.pages.beacon(*beacon_facts(ask)).status == 403
    assert site.pages.beacon(*beacon_facts(ask, consent="1")).status == 200
    assert [e.event_name for e in site.mirrored] == ["PageView"]


def test_without_a_pixel_nothing_is_served_and_it_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        pages = Pages(Config(), identity=None, accounts=None, enqueue=[].extend)
    assert pages.start(facts()) is None
    assert not pages.is_beacon(facts(pages.config.beacon_path, method="POST"))
    assert caplog.text.count("pages pass through untouched") == 1


# -- the page and its PageView ----------------------------------------------------------------


def test_a_page_fires_its_pageview_and_mirrors_it_with_the_same_id() -> None:
    site = Site()
    headers, page = site.serve(facts())
    (fired,) = browser_events(page)
    assert [(e.event_name, e.event_id, e.pixel_id) for e in site.mirrored] == [
        ("PageView", fired[1], PIXEL)
    ]
    assert "_pm_vid" in jar(headers)


def test_a_page_the_snippet_cannot_enter_mirrors_no_pageview() -> None:
    # No </head> and no <body>: the snippet stays out, so no browser copy exists to pair with.
    site = Site()
    _, body = site.serve(facts(), body=b"<div>fragment</div>")
    assert body == b"<div>fragment</div>"
    assert site.mirrored == []


def test_each_pixel_of_the_account_gets_a_copy_and_track_single_only_its_own() -> None:
    site = Site(pixels=(PIXEL, OTHER_PIXEL))
    view = tracking("Lead", pixel_id=OTHER_PIXEL)(custom_data={"value": 1})
    site.serve(facts(method="POST"), headers=JSON, body=b"{}", view=view)
    assert [(e.event_name, e.pixel_id) for e in site.mirrored] == [("Lead", OTHER_PIXEL)]
    site.serve(facts())
    assert sorted(e.pixel_id for e in site.mirrored if e.event_name == "PageView") == [
        PIXEL,
        OTHER_PIXEL,
    ]


# -- tracked events -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "when", "mirrored"),
    [
        pytest.param(200, None, True, id="200-default"),
        pytest.param(302, None, True, id="302-default"),
        pytest.param(304, None, False, id="304-default"),
        pytest.param(400, None, False, id="400-default"),
        pytest.param(500, None, False, id="500-default"),
        pytest.param(400, lambda status: True, True, id="400-when-always"),
    ],
)
def test_tracked_events_count_only_when_the_response_says_so(
    status: int, when: Callable[[int], bool] | None, mirrored: bool
) -> None:
    site = Site()
    view = tracking("Lead", when=when)()
    site.serve(facts(method="POST"), status=status, headers=JSON, body=b"{}", view=view)
    assert [e.event_name for e in site.mirrored] == (["Lead"] if mirrored else [])


def test_a_tracked_json_response_announces_its_events_and_leaves_shared_caches() -> None:
    site = Site()
    cached = [*JSON, ("Cache-Control", "public, max-age=300")]
    view = tracking("AddToCart")(custom_data={"value": 3})
    headers, body = site.serve(facts(method="POST"), headers=cached, body=b"{}", view=view)
    assert body == b"{}"
    (announced,) = json.loads(values(headers, EVENTS_HEADER)[0])
    # The header carries the id, not the data: the app's JSON body has that already.
    assert announced == {"event": "AddToCart", "eventID": site.mirrored[0].event_id}
    assert values(headers, "Cache-Control") == ["private, max-age=300"]


def test_a_purchase_behind_a_redirect_fires_on_the_next_page_with_the_same_id() -> None:
    site = Site()
    view = tracking("Purchase")(
        custom_data={"value": 49.99, "currency": "USD"},
        server_only={"margin": 12.5},
        user_data={"email": "ann@example.com"},
    )
    redirect = [("Location", "/thanks")]
    headers, _ = site.serve(facts("/checkout", method="POST"), 303, redirect, b"", view)
    cookies = jar(headers)
    assert values(headers, EVENTS_HEADER) == []
    next_headers, page = site.serve(facts("/thanks", cookies=cookies))
    fired = dict(browser_events(page))
    (purchase,) = [e for e in site.mirrored if e.event_name == "Purchase"]
    assert fired["Purchase"] == purchase.event_id
    assert b"12.5" not in page
    assert b"ann@example.com" not in page
    assert json.loads(purchase.payload)["custom_data"] == {
        "value": 49.99,
        "currency": "USD",
        "margin": 12.5,
    }
    assert jar(next_headers)["_pm_vid_ev"] == ""  # fired once: the cookie goes


def test_the_page_gets_the_nonce_of_its_own_csp() -> None:
    csp = "default-src 'self'; script-src 'self' 'nonce-r4nd0m' https://connect.facebook.net"
    _, page = Site().serve(facts(), headers=[*PAGE, ("Content-Security-Policy", csp)])
    assert b'<script data-pixelmirror="" nonce="r4nd0m">' in page


# -- the server copies' data --------------------------------------------------------------------


def test_identify_enriches_every_event_of_the_request() -> None:
    def identify(request: RequestFacts) -> dict[str, object]:
        return {"email": "ann@example.com"} if "session=ann" in request.headers["cookie"] else {}

    site = Site(identify=identify)
    view = tracking("Lead")()
    site.serve(facts(cookies={"session": "ann"}), view=view)
    assert [e.event_name for e in site.mirrored] == ["PageView", "Lead"]
    hashed = hashlib.sha256(b"ann@example.com").hexdigest()
    assert [json.loads(e.payload)["user_data"]["em"] for e in site.mirrored] == [hashed] * 2


def test_external_ids_from_the_app_add_to_the_visitors() -> None:
    site = Site(identify=lambda request: {"external_id": ["cust-9", "crm-77"]})
    view = tracking("Lead")(user_data={"external_id": "order-5"})
    site.serve(facts(method="POST"), headers=JSON, body=b"{}", view=view)
    (lead,) = site.mirrored
    ids = json.loads(lead.payload)["user_data"]["external_id"]
    expected = [hashlib.sha256(i.encode()).hexdigest() for i in ("cust-9", "crm-77", "order-5")]
    assert ids[1:] == expected
    assert len(ids) == 4  # the visitor's own first


def test_a_failing_identify_hook_leaves_the_events_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def identify(request: RequestFacts) -> dict[str, object]:
        raise RuntimeError("the session store is down")

    site = Site(identify=identify)
    site.serve(facts())
    assert [e.event_name for e in site.mirrored] == ["PageView"]
    assert "identify hook failed" in caplog.text


@pytest.mark.parametrize("pixels", [(PIXEL,), (PIXEL, OTHER_PIXEL)], ids=["one", "two"])
def test_invalid_app_data_is_counted_per_copy_not_lost_silently(
    pixels: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    site = Site(pixels=pixels)
    view = tracking("Purchase")(custom_data={"value": "49.99", "currency": "USD"})  # text
    site.serve(facts(method="POST"), headers=JSON, body=b"{}", view=view)
    assert site.mirrored == []
    assert site.pages.invalid == len(pixels)
    assert "must be a number" in caplog.text


def test_an_event_for_a_pixel_outside_the_account_goes_nowhere() -> None:
    site = Site()
    view = tracking("Lead", pixel_id="999")()
    headers, _ = site.serve(facts(method="POST"), headers=JSON, body=b"{}", view=view)
    assert values(headers, EVENTS_HEADER) == []
    assert site.mirrored == []


def test_the_client_ip_comes_through_a_trusted_proxy_only() -> None:
    forwarded = {"x-forwarded-for": "198.51.100.23"}
    sites = [Site(trusted_proxies=("203.0.113.0/24",)), Site()]
    for site in sites:
        site.serve(facts(**forwarded))
    ips = [json.loads(s.mirrored[0].payload)["user_data"]["client_ip_address"] for s in sites]
    assert ips == ["198.51.100.23", "203.0.113.9"]


# -- failures -----------------------------------------------------------------------------------


def test_a_failing_plan_sends_the_response_as_the_app_made_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = Site()

    def broken(*args: object) -> None:
        raise RuntimeError("pixelmirror bug")

    monkeypatch.setattr(site.pages, "plan", broken)
    request = site.pages.start(facts())
    assert request is not None
    assert request.respond(200, PAGE) is PAGE
    assert not request.holding
    assert request.feed(HTML, more=False) == (None, HTML)
    request.done()
    assert "planning the response failed" in caplog.text
    assert site.mirrored == []  # no snippet went in: no PageView to mirror


def test_done_mirrors_once_whatever_the_adapter_calls() -> None:
    site = Site()
    request = site.pages.start(facts())
    assert request is not None
    play(request, 200, PAGE, HTML)
    request.done()
    assert [e.event_name for e in site.mirrored] == ["PageView"]


# -- beacon mode --------------------------------------------------------------------------------


def beacon_facts(body: dict[str, object], **cookies: str) -> tuple[RequestFacts, bytes]:
    request = facts(
        "/.pixelmirror/beacon",
        method="POST",
        cookies=cookies,
        origin="http://shop.example",
        **{"content-type": "application/json"},
    )
    return request, json.dumps(body).encode()


def test_beacon_mode_pages_are_the_same_bytes_for_everyone_and_set_no_cookie() -> None:
    site = Site(mode="beacon")
    first = site.serve(facts())
    again = site.serve(facts(cookies={"_pm_vid": "someone-else"}))
    assert first == again
    assert values(first[0], "Set-Cookie") == []
    assert site.mirrored == []  # the PageView comes back through the beacon


def test_the_beacon_answers_the_ids_it_mirrored_then_the_carried_events() -> None:
    site = Site(mode="beacon")
    view = tracking("Purchase")(custom_data={"value": 5, "currency": "EUR"})
    redirect = [("Location", "/thanks")]
    headers, _ = site.serve(facts("/checkout", method="POST"), 303, redirect, b"", view)
    (purchase,) = site.mirrored
    request, body = beacon_facts(
        {"url": "http://shop.example/thanks", "events": [{"event": "PageView"}]},
        **jar(headers),
    )
    assert site.pages.is_beacon(request)
    answer = site.pages.beacon(request, body)
    assert answer.status == 200
    answered = json.loads(answer.body)
    pageview = site.mirrored[-1]
    assert answered["events"] == [
        {"event": "PageView", "eventID": pageview.event_id},
        {
            "event": "Purchase",
            "eventID": purchase.event_id,
            "custom_data": {"value": 5, "currency": "EUR"},
        },
    ]
    assert any(cookie.startswith("_pm_vid_ev=;") for cookie in answer.cookies)


def test_a_beacon_from_another_origin_is_refused_and_mirrors_nothing() -> None:
    site = Site(mode="beacon")
    request, body = beacon_facts({"url": "http://shop.example/", "events": [{"event": "PageView"}]})
    elsewhere = replace(request, headers={**request.headers, "origin": "http://evil.example"})
    answer = site.pages.beacon(elsewhere, body)
    assert answer.status == 403
    assert site.mirrored == []


def test_identify_runs_once_as_the_response_starts_not_after_it() -> None:
    asked: list[str] = []

    def identify(request: RequestFacts) -> dict[str, object]:
        asked.append(request.path)
        return {"email": "ann@example.com"}

    site = Site(identify=identify)
    request = site.pages.start(facts("/thanks"))
    assert request is not None
    with request:
        tracking("Lead")()()
    request.respond(200, PAGE)
    assert asked == ["/thanks"]  # still inside the app's call, where its request context is
    request.feed(HTML, more=False)
    request.done()
    assert asked == ["/thanks"]
    assert [e.event_name for e in site.mirrored] == ["PageView", "Lead"]


def test_identify_is_not_asked_for_a_response_that_mirrors_nothing() -> None:
    asked: list[str] = []
    site = Site(identify=lambda request: asked.append(request.path) or {})
    site.serve(facts("/api"), headers=JSON, body=b"{}")
    assert asked == []
    assert site.mirrored == []


def test_a_national_phone_gets_the_default_countrys_calling_code() -> None:
    site = Site(identify=lambda request: {"phone": "(650) 555-1212"}, default_country="us")
    site.serve(facts())
    (pageview,) = site.mirrored
    expected = hashlib.sha256(b"16505551212").hexdigest()
    assert json.loads(pageview.payload)["user_data"]["ph"] == expected


@pytest.mark.parametrize(
    ("body", "said"),
    [
        pytest.param(HTML, 1, id="a-page-with-a-head"),
        pytest.param(b"Not Found", 0, id="a-page-without-head-or-body"),
    ],
)
def test_what_the_browser_fires_is_logged_only_when_the_snippet_went_in(
    caplog: pytest.LogCaptureFixture, body: bytes, said: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="pixelmirror")
    Site().serve(facts(), status=404, body=body)
    fired = [r for r in caplog.records if r.getMessage().startswith("browser -> ")]
    assert len(fired) == said


def test_the_usual_pages_pageview_is_written_straight(monkeypatch: pytest.MonkeyPatch) -> None:
    # No identify data, an http page: the visitor's wire user data, without the general road.
    def general(*args: object, **kwargs: object) -> list[ServerEvent]:
        raise AssertionError("the general road was taken")

    monkeypatch.setattr("pixelmirror.web.pages.page_views", general)
    site = Site()
    site.serve(facts(referer="https://ads.example/"))
    (pageview,) = site.mirrored
    assert json.loads(pageview.payload)["referrer_url"] == "https://ads.example/"


@pytest.mark.parametrize("seed", range(3))
def test_a_pages_pageview_is_what_create_builds_of_the_requests_user_data(seed: int) -> None:
    # The visitor's own wire user data (no identify data) and the general road (with it)
    # alike: random addresses, user agents, cookies, referrers and queries, two pixels, LDU
    # or not.
    rng = random.Random(seed)
    odd = '"\\é€\u2028\u0000\t😀 ab'
    found: dict[str, object] = {}
    site = Site(identify=lambda request: dict(found), pixels=(PIXEL, OTHER_PIXEL))
    ldu_site = Site(
        identify=lambda request: dict(found), ldu=True, default_country="de", test_event_code="T1"
    )
    for _ in range(150):
        found.clear()
        if rng.random() < 0.3:
            found[rng.choice(["email", "external_id", "client_user_agent"])] = "Ann@Example.com"
        v4 = ".".join(str(rng.randint(0, 255)) for _ in range(4))
        peer = rng.choice([v4, f"::ffff:{v4}", str(ipaddress.IPv6Address(rng.getrandbits(128)))])
        agent = rng.choice([CHROME, f"{CHROME} {''.join(rng.choices(odd, k=12))}".strip()])
        chosen = rng.choice([site, ldu_site])
        first = chosen.pages.identity.resolve(facts())
        assert first is not None
        cookies = dict([first.set_cookies[0].split(";")[0].split("=", 1)])  # the visitor's
        if rng.random() < 0.5:
            cookies["_fbp"] = "fb.1.1700000000000.42"
        sent = {"user-agent": agent}
        referrer = rng.choice([None, "https://ads.example/?q=1", "android-app://x", odd])
        if referrer is not None:
            sent["referer"] = referrer
        query = rng.choice(["", "a=1", "fbclid=IwAR1", "x=%22&fbclid=2"])
        request = replace(facts(cookies=cookies, **sent), peer=peer, query=query)
        chosen.mirrored.clear()
        chosen.serve(request)
        views = [event for event in chosen.mirrored if event.event_name == "PageView"]
        assert views
        visitor = chosen.pages.identity.resolve(request)  # the same visitor again
        assert visitor is not None
        assert visitor.visitor_id == first.visitor_id
        user_data = {
            "external_id": [visitor.external_id, found["external_id"]]
            if "external_id" in found
            else visitor.external_id,
            "client_ip_address": visitor.client_ip,
            "client_user_agent": found.get("client_user_agent", visitor.user_agent),
            # Both made on the visitor's first page (an fbclid's _fbc too), at its time.
            "fbp": json.loads(views[0].payload)["user_data"].get("fbp"),
            "fbc": json.loads(views[0].payload)["user_data"].get("fbc"),
            **{key: value for key, value in found.items() if key == "email"},
        }
        config = chosen.pages.config
        for view in views:
            expected = ServerEvent.create(
                "PageView",
                pixel_id=view.pixel_id,
                action_source="website",
                user_data=user_data,
                event_id=view.event_id,
                event_source_url="http://shop.example/" + (f"?{query}" if query else ""),
                referrer_url=referrer if referrer and referrer.startswith("https://") else None,
                data_processing_options=["LDU"] if config.ldu else None,
                test_event_code=config.test_event_code,
                default_country=config.default_country,
                now=view.event_time,
            )
            assert view == expected
            assert view.match == expected.match
