"""Browser truth: the pixel code pixelmirror writes runs in a real headless Chromium and fires
the same eventIDs that reach the Conversions API.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; the machines are offline, so
``connect.facebook.net`` and ``www.facebook.com`` are routed to ``browser_stub.js``, a small
stand-in for ``fbevents.js`` that reports every ``fbq`` call back to the test. Any other
request that would leave loopback is aborted and counted as a failure.

Skipped when Chromium or Playwright is missing, unless ``PIXELMIRROR_REQUIRE_BROWSER=1``
(CI) turns that into a failure.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from conftest import PIXEL, SECRET, TOKEN
from djangokit import django_shop
from pixelmirror import PixelMirror
from pixelmirror.testing import FakeGraphAPI, ReceivedEvent
from servers import load_example, serve_asgi, serve_wsgi
from webkit import browser_events

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page
    from playwright.sync_api import Request as BrowserRequest
    from playwright.sync_api import Route as BrowserRoute

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.browser

TESTS = Path(__file__).resolve().parent
STUB_JS = (TESTS / "browser_stub.js").read_bytes()
CHROMIUM = "/usr/bin/chromium"  # Debian's; PIXELMIRROR_CHROMIUM points elsewhere
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RECORD_URL = "https://connect.facebook.net/__record"
TIMEOUT = 10.0  # seconds, for any single wait
EMAIL = "ann@example.com"
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
TRACK_METHODS = frozenset({"track", "trackCustom", "trackSingle", "trackSingleCustom"})
FBP = re.compile(r"fb\.[0-9]\.[0-9]{13}\.[0-9]+")

MODES = ["inline", "beacon"]
# The events the browser fires (and the fake receives), page by page: home, product (then add
# to cart), checkout → thank-you page. Inline mode fires them in this order; in beacon mode a
# page's PageView waits for the beacon's answer, so only each page's set is fixed.
SHOP_PAGES = [
    ("/", ["PageView"]),
    ("/product/tee", ["PageView", "ViewContent", "AddToCart"]),
    ("/thanks", ["PageView", "Purchase"]),
]
EXPECTED = [name for _, names in SHOP_PAGES for name in names]


def _chromium() -> str | None:
    chosen = os.environ.get("PIXELMIRROR_CHROMIUM")
    if chosen:
        return chosen if os.path.exists(chosen) else None
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    return shutil.which("chromium")


def _missing() -> str | None:
    if sync_playwright is None:
        return "the Python package playwright is not installed (pip install -e '.[dev]')"
    if _chromium() is None:
        where = os.environ.get("PIXELMIRROR_CHROMIUM") or CHROMIUM
        return f"Chromium is not installed ({where}; Debian: apt-get install chromium)"
    return None


# -- the stub network ----------------------------------------------------------------------


@dataclass(frozen=True)
class FbqCall:
    """One ``fbq`` call as the stub library saw it."""

    origin: float  # performance.timeOrigin: which page load
    seq: int  # order within that page load
    url: str  # the page's location.href
    method: str
    args: list[Any]
    sent: list[dict[str, Any]]  # for track calls: {pixel, external_id} per pixel reached
    fbp: str | None  # the _fbp cookie at call time, as the real library would send it

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def event(self) -> tuple[str, str | None]:
        """``(event name, eventID)`` of a track call."""
        args = self.args[1:] if self.method.startswith("trackSingle") else self.args
        options = args[2] if len(args) > 2 and isinstance(args[2], dict) else {}
        event_id = options.get("eventID")
        return str(args[0]), event_id if isinstance(event_id, str) else None


@dataclass
class StubNetwork:
    """Routes Meta's hosts to the stub library and records what the browser sent them."""

    calls: list[FbqCall] = field(default_factory=list)
    hits: list[dict[str, str]] = field(default_factory=list)  # www.facebook.com/tr queries
    escaped: list[str] = field(default_factory=list)  # requests that tried to leave loopback

    def install(self, context: BrowserContext) -> None:
        # Playwright tries the most recently added route first.
        context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z]+://"), self._abort)
        context.route("https://connect.facebook.net/**", self._connect)
        context.route("https://www.facebook.com/**", self._facebook)

    def _abort(self, route: BrowserRoute) -> None:
        self.escaped.append(route.request.url)
        route.abort()

    def _connect(self, route: BrowserRoute) -> None:
        request = route.request
        if request.url == RECORD_URL and request.method == "POST":
            self.calls.append(FbqCall(**json.loads(request.post_data or "{}")))
            route.fulfill(status=204, headers={"Access-Control-Allow-Origin": "*"})
        elif urlsplit(request.url).path.endswith("/fbevents.js"):
            route.fulfill(status=200, content_type="application/javascript", body=STUB_JS)
        else:
            route.fulfill(status=404, body="")

    def _facebook(self, route: BrowserRoute) -> None:
        url = urlsplit(route.request.url)
        if url.path == "/tr" or url.path == "/tr/":
            self.hits.append({k: v[0] for k, v in parse_qs(url.query).items()})
            route.fulfill(status=200, content_type="image/gif", body=GIF)
        else:
            route.fulfill(status=404, body="")

    # -- reading the record -------------------------------------------------------------

    def ordered(self) -> list[FbqCall]:
        return sorted(self.calls, key=lambda c: (c.origin, c.seq))

    def tracks(self, path: str | None = None) -> list[FbqCall]:
        return [
            c
            for c in self.ordered()
            if c.method in TRACK_METHODS and (path is None or c.path == path)
        ]

    def names(self, path: str | None = None) -> list[str]:
        return [c.event[0] for c in self.tracks(path)]


def is_stub_request(request: BrowserRequest) -> bool:
    host = urlsplit(request.url).hostname
    return host in ("connect.facebook.net", "www.facebook.com")


def wait_until(
    page: Page,
    ready: Callable[[], object],
    what: str,
    event: str = "requestfinished",
    predicate: Callable[[Any], bool] | None = is_stub_request,
) -> None:
    """Let the browser run until ``ready()`` holds, waking on each ``event`` of the page
    (by default: a request to the stub that finished).

    The sync API dispatches route handlers and events only inside Playwright calls, so no
    recording can slip in between checking ``ready()`` and starting the next wait.
    """
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}")
        try:
            page.wait_for_event(event, predicate, timeout=remaining * 1000)
        except PlaywrightError:
            if not ready():
                raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}") from None


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("PIXELMIRROR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PIXELMIRROR_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Session:
    """One browser context and page, with what the page said and what it sent to Meta."""

    context: BrowserContext
    page: Page
    stub: StubNetwork
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # request URLs, where a test records them

    def wait_for_events(self, names: list[str]) -> None:
        wait_until(
            self.page,
            lambda: len(self.stub.tracks()) >= len(names),
            f"the browser to fire {names} (fired so far: {self.stub.names()})",
        )

    def cookie(self, name: str) -> str | None:
        values = [c.get("value") for c in self.context.cookies() if c.get("name") == name]
        assert len(values) <= 1, f"{len(values)} cookies named {name}"
        return values[0] if values else None


@pytest.fixture
def session(browser: Browser) -> Iterator[Session]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    stub = StubNetwork()
    stub.install(context)
    # Report every CSP violation as a console error: Chromium's own report is a browser log
    # entry that not every Playwright version surfaces as a console message.
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', function (e) {"
        " console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + e.blockedURI);"
        "});"
    )
    page = context.new_page()
    session = Session(context=context, page=page, stub=stub)
    page.on("console", lambda message: session.console.append(message))
    page.on("pageerror", lambda error: session.errors.append(str(error)))
    try:
        yield session
    finally:
        context.close()
    assert stub.escaped == [], "requests tried to leave loopback"


def key(event: ReceivedEvent) -> tuple[str, str, str | None]:
    return event.pixel_id, event.event_name, event.event_id


# -- the example shops ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["flask_app", "starlette_app", "django_app"])
def test_shop_in_a_browser_fires_what_capi_receives(
    session: Session,
    served_fake: tuple[FakeGraphAPI, str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    name: str,
    mode: str,
) -> None:
    fake, _ = served_fake
    monkeypatch.setenv("PIXELMIRROR_MODE", mode)
    module = django_shop(request) if name == "django_app" else load_example(name)
    serve = serve_asgi if name == "starlette_app" else serve_wsgi
    page, stub = session.page, session.stub
    html: dict[str, str] = {}  # the DOM of each page once its events fired
    try:
        with serve(module.app) as base_url:
            page.goto(base_url + "/")
            session.wait_for_events(["PageView"])
            html["/"] = page.content()

            page.click("a[href='/product/tee']")
            page.wait_for_url(base_url + "/product/tee")
            session.wait_for_events(["PageView", "PageView", "ViewContent"])
            html["/product/tee"] = page.content()

            page.click("#add")
            page.wait_for_selector("#cart:has-text('In your cart.')")
            session.wait_for_events(["PageView", "PageView", "ViewContent", "AddToCart"])

            page.fill("input[name=email]", EMAIL)
            page.click("#buy")
            page.wait_for_url(base_url + "/thanks")
            session.wait_for_events(EXPECTED)
            html["/thanks"] = page.content()

            assert module.mirror.flush(timeout=15)
            received = fake.events
    finally:
        module.mirror.close(timeout=1)

    assert session.errors == []
    tracks = stub.tracks()
    fired = [c.event for c in tracks]
    story = [(c.path, *c.event) for c in tracks]
    if mode == "inline":
        assert [n for n, _ in fired] == EXPECTED, story
    assert [c.path for c in tracks] == [p for p, names in SHOP_PAGES for _ in names], story
    for path, names in SHOP_PAGES:
        assert sorted(stub.names(path)) == sorted(names), story
    assert all(event_id for _, event_id in fired), f"a browser event without eventID: {fired}"
    assert len(set(fired)) == len(fired), f"fired twice in the browser: {fired}"
    assert len({key(e) for e in received}) == len(received), "received twice by the fake"

    # Each browser event reached the pixel, and the fake has its twin: same pixel, name, id.
    by_key = {key(e): e for e in received}
    browser_keys = set()
    for call in tracks:
        assert [s["pixel"] for s in call.sent] == [PIXEL], f"{call.event} reached {call.sent}"
        browser_keys.add((PIXEL, *call.event))
    assert browser_keys == set(by_key)

    # One visitor on both channels: the external_id the pixel was initialised with, and the
    # _fbp cookie the browser holds (and sent with every event).
    inits = [c for c in stub.ordered() if c.method == "init"]
    assert inits, "the pixel was never initialised"
    assert {c.args[0] for c in inits} == {PIXEL}
    external_ids = {s["external_id"] for c in tracks for s in c.sent}
    assert len(external_ids) == 1
    (external_id,) = external_ids
    assert isinstance(external_id, str)
    assert re.fullmatch(r"[0-9a-f]{64}", external_id)
    fbp = session.cookie("_fbp")
    assert fbp is not None
    assert FBP.fullmatch(fbp)
    assert {c.fbp for c in tracks} == {fbp}
    for call in tracks:
        event_name, event_id = call.event
        twin = by_key[PIXEL, event_name, event_id]
        assert twin.user_data.get("external_id") == external_id, call.event
        assert twin.user_data.get("fbp") == fbp, call.event

    # The ids reach the browser in the HTML in inline mode, and never in beacon mode.
    for path, dom in html.items():
        if mode == "inline":
            in_page = [c.event for c in stub.tracks(path) if c.event[0] != "AddToCart"]
            assert browser_events(dom) == in_page, path
        else:
            assert [i for _, i in fired if i and i in dom] == [], path


# -- Content-Security-Policy ----------------------------------------------------------------

NONCE = "abc123"
POLICY = (
    f"script-src 'nonce-{NONCE}' https://connect.facebook.net; "
    "img-src https://www.facebook.com; "
    "connect-src 'self' https://www.facebook.com https://connect.facebook.net"
)
CSP_PAGE = (
    "<!doctype html><html><head><title>CSP</title></head><body><p id=page>{body}</p>"
    "<script {attrs}>document.getElementById('page').dataset.ran = 'yes';</script>"
    "</body></html>"
)


def csp_app(mirror: PixelMirror) -> Any:
    """A tiny Starlette site under a strict nonce policy, wrapped by pixelmirror."""

    async def strict(request: Request) -> HTMLResponse:
        body = CSP_PAGE.format(body="strict", attrs=f'nonce="{NONCE}"')
        return HTMLResponse(body, headers={"Content-Security-Policy": POLICY})

    async def nonceless(request: Request) -> HTMLResponse:
        body = CSP_PAGE.format(body="own script without nonce", attrs="")
        return HTMLResponse(body, headers={"Content-Security-Policy": POLICY})

    routes = [Route("/", strict), Route("/nonceless", nonceless)]
    return mirror.asgi(Starlette(routes=routes))


def csp_problems(session: Session) -> list[str]:
    texts = [m.text for m in session.console if m.type in ("error", "warning")]
    return [t for t in texts if "Content Security Policy" in t or "CSP" in t] + session.errors


@pytest.fixture
def csp_mirror(fake: FakeGraphAPI) -> Iterator[Callable[[str], PixelMirror]]:
    made: list[PixelMirror] = []

    def make(mode: str) -> PixelMirror:
        mirror = PixelMirror(
            pixel_id=PIXEL,
            access_token=TOKEN,
            secret_key=SECRET,
            cookie_secure=False,
            flush_interval=0.05,
            fb_cookies=False,  # let the pixel mint _fbp in the browser, under the policy
            transport=fake.transport,
            mode=mode,
        )
        made.append(mirror)
        return mirror

    yield make
    for mirror in made:
        mirror.close(timeout=1)


@pytest.mark.parametrize("mode", MODES)
def test_pixel_runs_under_a_nonce_policy_without_violations(
    session: Session, fake: FakeGraphAPI, csp_mirror: Callable[[str], PixelMirror], mode: str
) -> None:
    mirror = csp_mirror(mode)
    page, stub = session.page, session.stub
    with serve_asgi(csp_app(mirror)) as base_url:
        response = page.goto(base_url + "/")
        assert response is not None
        assert response.headers["content-security-policy"] == POLICY
        session.wait_for_events(["PageView"])
        ((name, event_id),) = [c.event for c in stub.tracks()]
        assert name == "PageView"
        assert event_id
        # The stub's pixel request went out under img-src.
        wait_until(page, lambda: any(h.get("eid") == event_id for h in stub.hits), "/tr hit")
        assert page.get_attribute("#page", "data-ran") == "yes"  # the app's own script ran
        assert mirror.flush(timeout=15)

    assert csp_problems(session) == []
    # Browsers hide a nonce from attribute selectors; the element's property still holds it.
    assert page.locator("script[data-pixelmirror]").evaluate("s => s.nonce") == NONCE
    fbp = session.cookie("_fbp")
    assert fbp is not None
    assert FBP.fullmatch(fbp)
    assert fbp.startswith("fb.0.")  # 127.0.0.1: no registrable domain
    assert (PIXEL, "PageView", event_id) in {key(e) for e in fake.events}


def test_csp_check_sees_a_violation(
    session: Session, csp_mirror: Callable[[str], PixelMirror]
) -> None:
    """The control for the test above: a script without the nonce is reported."""
    with serve_asgi(csp_app(csp_mirror("inline"))) as base_url:
        session.page.goto(base_url + "/nonceless")
        session.wait_for_events(["PageView"])  # pixelmirror's own script has the nonce
        assert session.page.get_attribute("#page", "data-ran") is None
        wait_until(session.page, lambda: csp_problems(session), "a CSP report", "console", None)
    problems = csp_problems(session)
    assert problems, "a nonce-less inline script ran, or its violation went unreported"
    assert any("script-src" in p for p in problems)


# -- consent from a banner ------------------------------------------------------------------

CONSENT_COOKIE = "cmp_consent=1"
BANNER_PAGE = (
    "<!doctype html><html><head><title>Banner</title></head><body>"
    "<button id=accept onclick=\"document.cookie='cmp_consent=1; path=/';"
    ' pixelmirror.consent(true); pixelmirror.consent(true)">Accept</button>'
    "<button id=refuse onclick=\"document.cookie='cmp_consent=0; path=/';"
    ' pixelmirror.consent(false)">Refuse</button>'
    "</body></html>"
)


def banner_app(mirror: PixelMirror) -> Any:
    """A Starlette site whose banner sets a CMP's cookie, then tells pixelmirror."""

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(BANNER_PAGE)

    return mirror.asgi(Starlette(routes=[Route("/", home)]))


def meta_loads(session: Session) -> list[str]:
    """The requests the page made to Meta's hosts for the library itself."""
    return [url for url in session.loaded if "fbevents.js" in url]


@pytest.fixture
def banner_session(session: Session) -> Session:
    session.page.on("request", lambda request: session.loaded.append(request.url))
    return session


def beacon_posts(session: Session) -> list[str]:
    return [url for url in session.loaded if url.endswith("/.pixelmirror/beacon")]


@pytest.mark.parametrize("mode", MODES)
def test_consent_given_on_the_first_page_counts_its_pageview_once_on_both_channels(
    banner_session: Session, make_mirror: Callable[..., PixelMirror], fake: FakeGraphAPI, mode: str
) -> None:
    session = banner_session
    mirror = make_mirror(mode=mode, consent_cookie=CONSENT_COOKIE, fb_cookies=False)
    page, stub = session.page, session.stub
    with serve_asgi(banner_app(mirror)) as base_url:
        page.goto(base_url + "/")
        if mode == "beacon":  # the page asked at once, and was refused
            wait_until(
                page, lambda: beacon_posts(session), "the first beacon", "requestfinished", None
            )
        assert page.evaluate("typeof window.pixelmirror.consent") == "function"
        assert meta_loads(session) == [], "the pixel loaded before consent"
        assert session.cookie("_pm_vid") is None
        assert page.evaluate("typeof window.fbq") == "undefined"

        page.click("#accept")  # consent(true), twice
        session.wait_for_events(["PageView"])
        # A third call after the page counted: nothing more to fire.
        assert page.evaluate("pixelmirror.consent(true)") == []
        assert mirror.flush(timeout=15)
        received = fake.events

    assert session.errors == []
    ((name, event_id),) = [c.event for c in stub.tracks()]
    assert name == "PageView"
    assert event_id
    assert [key(e) for e in received] == [(PIXEL, "PageView", event_id)]
    (twin,) = received
    (init,) = [c for c in stub.ordered() if c.method == "init"]
    assert init.args[1] == {"external_id": twin.user_data["external_id"]}
    assert twin.data["event_source_url"] == base_url + "/"
    assert len(meta_loads(session)) == 1
    assert session.cookie("_pm_vid") is not None


def test_consent_refused_revokes_the_pixel_and_nothing_fires_after(
    banner_session: Session, make_mirror: Callable[..., PixelMirror], fake: FakeGraphAPI
) -> None:
    session = banner_session
    mirror = make_mirror(consent_cookie=CONSENT_COOKIE, fb_cookies=False)
    page, stub = session.page, session.stub
    with serve_asgi(banner_app(mirror)) as base_url:
        page.goto(base_url + "/")
        page.click("#accept")
        session.wait_for_events(["PageView"])
        posts = len(beacon_posts(session))

        page.click("#refuse")  # consent(false)
        wait_until(
            page,
            lambda: any(c.method == "consent" for c in stub.calls),
            "the pixel's consent revoked",
        )
        assert page.evaluate("pixelmirror.track('AddToCart', {value: 1})") == []
        assert page.evaluate("pixelmirror.pageview()") == []
        assert page.evaluate("pixelmirror.consent(true)") == []
        page.evaluate("fbq('track', 'Lead')")  # even the site's own call reaches no pixel
        wait_until(
            page,
            lambda: any(c.event[0] == "Lead" for c in stub.calls if c.method == "track"),
            "the site's own call recorded",
        )
        assert len(beacon_posts(session)) == posts, "a beacon after the refusal"
        assert mirror.flush(timeout=15)
        received = fake.events

    assert session.errors == []
    revoke = [c for c in stub.ordered() if c.method == "consent"]
    assert [c.args for c in revoke] == [["revoke"]]
    assert [c.event[0] for c in stub.tracks() if c.sent] == ["PageView"]
    assert [e.event_name for e in received] == ["PageView"]


@pytest.mark.parametrize("navigator_gpc", [False, True], ids=["header", "header-and-navigator"])
def test_global_privacy_control_refuses_even_after_the_banner_consents(
    browser: Browser,
    make_mirror: Callable[..., PixelMirror],
    fake: FakeGraphAPI,
    navigator_gpc: bool,
) -> None:
    context = browser.new_context(extra_http_headers={"Sec-GPC": "1"})
    stub = StubNetwork()
    stub.install(context)
    if navigator_gpc:  # what a browser with GPC built in also says to scripts
        context.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"
        )
    page = context.new_page()
    asked: list[str] = []
    answers: list[int] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on(
        "response",
        lambda response: (
            answers.append(response.status) if response.url.endswith("/beacon") else None
        ),
    )
    mirror = make_mirror(consent_cookie=CONSENT_COOKIE, honor_gpc=True)
    try:
        with serve_asgi(banner_app(mirror)) as base_url:
            page.goto(base_url + "/")
            asked.clear()
            page.evaluate("document.cookie = 'cmp_consent=1; path=/'")
            assert page.evaluate("pixelmirror.consent(true)") == []
            if navigator_gpc:  # the script refused on its own: no beacon at all
                assert asked == []
            else:  # the beacon asked and the server refused it
                assert asked == [base_url + "/.pixelmirror/beacon"]
                wait_until(page, lambda: answers, "the beacon's answer", "response", None)
                assert answers == [403]
            assert mirror.flush(timeout=15)
    finally:
        context.close()
    assert stub.calls == []
    assert stub.escaped == []
    assert fake.events == []
