"""The Django adapter, through Django's own test clients: the sync middleware chain (``Client``,
as under WSGI) and the async one (``AsyncClient``, as under ASGI), against a FakeGraphAPI
served on loopback."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync

import djangokit

djangokit.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template import Context, Template  # noqa: E402
from django.test import AsyncClient, Client, RequestFactory, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402

from conftest import SECRET  # noqa: E402
from pixelmirror import EVENTS_HEADER, current_event, lifecycle, track  # noqa: E402
from pixelmirror.django import PixelMirrorMiddleware, conf, get_mirror  # noqa: E402
from pixelmirror.django.middleware import RawCookie  # noqa: E402
from pixelmirror.snippet import MARKER  # noqa: E402
from pixelmirror.testing import FakeGraphAPI, ReceivedEvent  # noqa: E402
from webkit import CHROME, HTML, browser_events, call, environ, header  # noqa: E402

PAGE = "<!doctype html><html><head><title>t</title></head><body><p>{}</p></body></html>"
TAGGED = Template(
    "{% load pixelmirror %}<!doctype html><html><head><title>t</title>{% pixelmirror %}"
    "</head><body><p>tagged</p></body></html>"
)
MIDDLEWARE = [
    "django.middleware.gzip.GZipMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "pixelmirror.django.PixelMirrorMiddleware",
]
PIXELMIRROR = "pixelmirror.django.PixelMirrorMiddleware"
EMAIL = "ann@example.com"


# -- the site ---------------------------------------------------------------------------


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.format("home"))


@track("ViewContent")
def function_view(request: HttpRequest) -> HttpResponse:
    current_event().custom_data.update(content_ids=["tee"])
    return HttpResponse(PAGE.format("function"))


@track("ViewContent")
async def async_view(request: HttpRequest) -> HttpResponse:
    current_event().custom_data.update(content_ids=["tee"])
    return HttpResponse(PAGE.format("async"))


@method_decorator(track("ViewContent"), name="get")
@method_decorator(track("Purchase"), name="post")
class ProductView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        current_event().custom_data.update(content_ids=["tee"])
        return HttpResponse(PAGE.format("class-based"))

    def post(self, request: HttpRequest) -> HttpResponse:
        event = current_event()
        event.custom_data.update(value=25.0, currency="USD")
        event.user_data.update(email=request.POST["email"])
        return HttpResponseRedirect("/thanks", status=303)


@method_decorator(track("ViewContent"), name="get")
class AsyncProductView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        current_event().custom_data.update(content_ids=["tee"])
        return HttpResponse(PAGE.format("async class-based"))


@track("AddToCart")
def cart(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


def tagged(request: HttpRequest) -> HttpResponse:
    return HttpResponse(TAGGED.render(Context()))


def tagged_nonce(request: HttpRequest) -> HttpResponse:
    template = Template("{% load pixelmirror %}<head>{% pixelmirror nonce=nonce %}</head>")
    return HttpResponse(template.render(Context({"nonce": "n0nce"})))


def streamed(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield from (HTML[:20], HTML[20:45], HTML[45:])

    return StreamingHttpResponse(chunks(), content_type="text/html")


def streamed_async(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (HTML[:20], HTML[20:45], HTML[45:]):
            yield chunk

    return StreamingHttpResponse(chunks(), content_type="text/html")


#: A page with no place for the snippet: it is read to its end, then goes as it is.
FRAGMENT = (b"<p>no head, ", b"no body</p>")


def streamed_fragment(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter(FRAGMENT), content_type="text/html")


def streamed_fragment_async(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in FRAGMENT:
            yield chunk

    return StreamingHttpResponse(chunks(), content_type="text/html")


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(io.BytesIO(HTML), content_type="text/html")


def catch_all(request: HttpRequest, rest: str) -> HttpResponse:
    return HttpResponse("catch-all")


urlpatterns = [
    path("", home),
    path("function", function_view),
    path("async", async_view),
    path("class-based", ProductView.as_view()),
    path("async-class-based", AsyncProductView.as_view()),
    path("api/cart", cart),
    path("checkout", ProductView.as_view()),
    path("thanks", home),
    path("tagged", tagged),
    path("tagged-nonce", tagged_nonce),
    path("streamed", streamed),
    path("streamed-async", streamed_async),
    path("streamed-fragment", streamed_fragment),
    path("streamed-fragment-async", streamed_fragment_async),
    path("file", file),
    path("<path:rest>/", catch_all),  # APPEND_SLASH would send /.pixelmirror/beacon here
]


def identify(request: HttpRequest) -> dict[str, object] | None:
    user = request.user
    if not user.is_authenticated:
        return None
    return {"email": user.email, "external_id": f"customer-{user.pk}"}


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def site(served_fake: tuple[FakeGraphAPI, str]) -> Iterator[FakeGraphAPI]:
    """This module's site with pixelmirror below the usual middleware; the fake it sends to."""
    fake, _ = served_fake
    conf.reset()
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE):
        try:
            yield fake
        finally:
            conf.reset()


class Browser:
    """Django's sync or async test client, driven the same way (headers go with each
    request: AsyncClient's own defaults take WSGI names)."""

    def __init__(self, kind: str, headers: dict[str, str] | None = None, **options: Any) -> None:
        self.headers = {"User-Agent": CHROME, **(headers or {})}
        self.client: Client | AsyncClient = (
            Client(**options) if kind == "sync" else AsyncClient(**options)
        )

    def get(self, url: str, **options: Any) -> Any:
        return self._run("get", url, **options)

    def post(self, url: str, **options: Any) -> Any:
        return self._run("post", url, **options)

    def head(self, url: str, **options: Any) -> Any:
        return self._run("head", url, **options)

    def _run(self, method: str, url: str, **options: Any) -> Any:
        options["headers"] = {**self.headers, **options.get("headers", {})}
        response = getattr(self.client, method)(url, **options)
        if isinstance(self.client, AsyncClient):
            return async_to_sync(_awaited)(response)
        return response


async def _awaited(response: Any) -> Any:
    return await response


KINDS = ["sync", "async"]


def mirrored(fake: FakeGraphAPI) -> list[ReceivedEvent]:
    assert get_mirror().flush(timeout=15)
    return fake.events


def keys(events: list[ReceivedEvent]) -> list[tuple[str, str | None]]:
    return [(e.event_name, e.event_id) for e in events]


# -- pages --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_page_gets_the_pixel_and_its_pageview_is_mirrored_with_the_same_id(
    site: FakeGraphAPI, kind: str
) -> None:
    response = Browser(kind).get("/")
    assert response.status_code == 200
    fired = browser_events(response.content)
    assert [name for name, _ in fired] == ["PageView"]
    assert response.content.count(MARKER) == 1
    assert int(response["Content-Length"]) == len(response.content)
    assert "private" in response["Cache-Control"]
    assert {"_pm_vid", "_fbp"} <= set(response.cookies)
    assert keys(mirrored(site)) == fired


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("url", ["/function", "/async", "/class-based", "/async-class-based"])
def test_track_on_function_async_and_class_based_views_mirrors_what_the_page_fires(
    site: FakeGraphAPI, kind: str, url: str
) -> None:
    response = Browser(kind).get(url)
    fired = browser_events(response.content)
    assert [name for name, _ in fired] == ["PageView", "ViewContent"]
    received = mirrored(site)
    assert sorted(keys(received)) == sorted(fired)
    view_content = next(e for e in received if e.event_name == "ViewContent")
    assert view_content.custom_data["content_ids"] == ["tee"]


@pytest.mark.parametrize("kind", KINDS)
def test_purchase_behind_a_redirect_fires_on_the_next_page_with_the_mirrored_id(
    site: FakeGraphAPI, kind: str
) -> None:
    browser = Browser(kind)
    browser.get("/class-based")
    response = browser.post("/checkout", data={"email": EMAIL}, follow=True)
    assert response.redirect_chain == [("/thanks", 303)]
    fired = browser_events(response.content)
    assert [name for name, _ in fired] == ["PageView", "Purchase"]
    purchase = [e for e in mirrored(site) if e.event_name == "Purchase"]
    assert keys(purchase) == [fired[1]]  # mirrored once, with the id the page fires
    assert purchase[0].user_data["em"] == hashlib.sha256(EMAIL.encode()).hexdigest()
    assert EMAIL not in response.content.decode()


@pytest.mark.parametrize("kind", KINDS)
def test_a_json_route_announces_its_event_in_the_header(site: FakeGraphAPI, kind: str) -> None:
    response = Browser(kind).post("/api/cart", data={})
    (announced,) = json.loads(response[EVENTS_HEADER])
    assert keys(mirrored(site)) == [("AddToCart", announced["eventID"])]


def test_pixelmirror_inside_gzip_compresses_the_page_with_the_pixel(site: FakeGraphAPI) -> None:
    browser = Browser("sync", headers={"Accept-Encoding": "gzip"})
    response = browser.get("/")
    assert response["Content-Encoding"] == "gzip"
    fired = browser_events(gzip.decompress(response.content))
    assert [name for name, _ in fired] == ["PageView"]


# -- streams and files --------------------------------------------------------------------


def streamed_body(response: Any, kind: str, url: str) -> bytes:
    """The body as the server would send it: Django gathers an iterator of the other kind
    than its handler's, with a warning."""

    def join() -> bytes:
        return async_to_sync(_joined)(response) if kind == "async" else b"".join(response)

    if (kind == "async") == url.endswith("-async"):
        return join()
    with pytest.warns(Warning, match="must consume"):
        return join()


async def _joined(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response])


@pytest.mark.parametrize(
    ("kind", "url"),
    [("sync", "/streamed"), ("async", "/streamed-async"), ("async", "/streamed")],
)
def test_a_stream_gets_the_pixel_and_its_pageview_is_mirrored_once_it_ends(
    site: FakeGraphAPI, kind: str, url: str
) -> None:
    response = Browser(kind).get(url)
    assert "_pm_vid" in response.cookies
    assert mirrored(site) == []  # not before the stream is over
    body = streamed_body(response, kind, url)
    response.close()
    fired = browser_events(body)
    assert [name for name, _ in fired] == ["PageView"]
    assert body.replace(body[body.index(MARKER) : body.index(b"</head>")], b"") == HTML
    assert keys(mirrored(site)) == fired


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("sync", "/streamed-fragment"),
        ("async", "/streamed-fragment-async"),
        ("async", "/streamed-fragment"),
    ],
)
def test_a_stream_without_a_place_for_the_snippet_is_read_to_its_end_and_goes_as_it_is(
    site: FakeGraphAPI, kind: str, url: str
) -> None:
    response = Browser(kind).get(url)
    body = streamed_body(response, kind, url)
    response.close()
    assert body == b"".join(FRAGMENT)
    assert mirrored(site) == []  # the page got no snippet: its PageView is not mirrored


@pytest.mark.parametrize(
    ("kind", "url"), [("sync", "/file"), ("async", "/file"), ("sync", "/streamed-async")]
)
def test_a_file_or_an_async_stream_under_wsgi_goes_as_it_is(
    site: FakeGraphAPI, kind: str, url: str
) -> None:
    response = Browser(kind).get(url)
    body = streamed_body(response, kind, url)
    response.close()
    assert body == HTML
    assert "_pm_vid" not in response.cookies
    assert mirrored(site) == []


# -- the beacon -----------------------------------------------------------------------------


def beacon_body(page: str = "http://testserver/") -> dict[str, object]:
    return {"url": page, "referrer": None, "events": [{"event": "PageView"}]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("place", ["last", "first"])
def test_the_beacon_is_answered_before_csrf_and_append_slash_whatever_the_order(
    site: FakeGraphAPI, kind: str, place: str
) -> None:
    others = [name for name in MIDDLEWARE if name != PIXELMIRROR]
    order = [*others, PIXELMIRROR] if place == "last" else [PIXELMIRROR, *others]
    with override_settings(MIDDLEWARE=order, PIXELMIRROR_MODE="beacon", APPEND_SLASH=True):
        browser = Browser(kind, enforce_csrf_checks=True)
        page = browser.get("/")
        assert browser_events(page.content) == []  # beacon mode: no ids in the page
        response = browser.post(
            "/.pixelmirror/beacon",
            data=json.dumps(beacon_body()),
            content_type="application/json",
            headers={"Origin": "http://testserver"},
        )
        refused = browser.post("/checkout", data={"email": EMAIL})
    assert response.status_code == 200, response.content
    answer = json.loads(response.content)
    fired = [(e["event"], e["eventID"]) for e in answer["events"]]
    assert [name for name, _ in fired] == ["PageView"]
    assert response["Cache-Control"] == "no-store"
    assert refused.status_code == 403  # CSRF still guards every other POST
    assert keys(mirrored(site)) == fired


# -- the template tag -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_page_with_the_template_tag_is_left_alone_and_its_pageview_mirrored_once(
    site: FakeGraphAPI, kind: str
) -> None:
    response = Browser(kind).get("/tagged")
    page = response.content
    assert page.count(MARKER) == 1
    assert page.index(MARKER) < page.index(b"</head>")
    assert page.startswith(b"<!doctype html><html><head><title>t</title><script data-")
    fired = browser_events(page)
    assert [name for name, _ in fired] == ["PageView"]
    assert {"_pm_vid", "_fbp"} <= set(response.cookies)
    assert "private" in response["Cache-Control"]
    assert keys(mirrored(site)) == fired


@pytest.mark.parametrize("kind", KINDS)
def test_a_head_request_for_a_tagged_page_mirrors_no_pageview(
    site: FakeGraphAPI, kind: str
) -> None:
    response = Browser(kind).head("/tagged")
    assert response.status_code == 200
    assert mirrored(site) == []


def test_the_template_tag_gives_its_script_the_nonce_it_is_given(site: FakeGraphAPI) -> None:
    page = Browser("sync").get("/tagged-nonce").content
    assert page.startswith(b'<head><script data-pixelmirror="" nonce="n0nce">')
    assert page.count(MARKER) == 1
    assert keys(mirrored(site)) == browser_events(page)


def test_the_template_tag_renders_nothing_outside_a_pixelmirror_page() -> None:
    assert TAGGED.render(Context()).count("<script") == 0


# -- settings -------------------------------------------------------------------------------

OTHER_PIXEL = "5550001111"


@pytest.mark.parametrize("secure", ["true", True])
def test_settings_override_the_environment_and_text_reads_as_the_environments(
    site: FakeGraphAPI, secure: str | bool
) -> None:
    with override_settings(PIXELMIRROR_PIXEL_ID=OTHER_PIXEL, PIXELMIRROR_COOKIE_SECURE=secure):
        response = Browser("sync").get("/")
        received = mirrored(site)
    assert f'"{OTHER_PIXEL}"'.encode() in response.content
    assert {e.pixel_id for e in received} == {OTHER_PIXEL}
    # The environment says PIXELMIRROR_COOKIE_SECURE=false.
    assert response.cookies["_pm_vid"].OutputString().endswith("; Secure")


def test_one_mirror_per_process_shared_by_every_middleware_and_closed_at_exit(
    site: FakeGraphAPI,
) -> None:
    first = PixelMirrorMiddleware(lambda request: HttpResponse())
    second = PixelMirrorMiddleware(lambda request: HttpResponse())
    assert first(RequestFactory().get("/")).status_code == 200
    assert second(RequestFactory().get("/")).status_code == 200
    mirror = get_mirror()
    assert mirror is get_mirror()
    assert mirror.dispatcher is not None  # its sender runs from the start
    assert mirror in lifecycle._live  # the exit hook flushes and closes it


def test_without_a_pixelmirror_key_djangos_secret_keys_sign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PIXELMIRROR_SECRET_KEY", raising=False)
    keys = ("k" * 40, "old" * 10)
    with override_settings(SECRET_KEY=keys[0], SECRET_KEY_FALLBACKS=[keys[1]]):
        assert conf.mirror_config().secret_key == keys
        with override_settings(PIXELMIRROR_SECRET_KEY=SECRET):
            assert conf.mirror_config().secret_key == (SECRET,)


# -- identify: the logged-in visitor --------------------------------------------------------


@pytest.fixture(scope="module")
def customer() -> User:
    call_command("migrate", verbosity=0)
    return User.objects.create_user("ann", email=EMAIL, password="-")


@pytest.mark.parametrize("kind", KINDS)
def test_the_identify_hook_sees_request_user_and_enriches_every_event(
    site: FakeGraphAPI, customer: User, kind: str
) -> None:
    browser = Browser(kind)
    browser.client.force_login(customer)
    with override_settings(PIXELMIRROR_IDENTIFY=f"{__name__}.identify"):
        browser.get("/function")
        received = mirrored(site)
    assert [e.event_name for e in received] == ["PageView", "ViewContent"]
    email = hashlib.sha256(EMAIL.encode()).hexdigest()
    customer_id = hashlib.sha256(f"customer-{customer.pk}".encode()).hexdigest()
    for event in received:
        assert event.user_data["em"] == email
        assert customer_id in event.user_data["external_id"]


# -- the wire -------------------------------------------------------------------------------


# (method, path, content type, body) of requests whose responses set cookies of each kind:
# the visitor's, the carry cookie of a redirect, the beacon's answer.
COOKIE_REQUESTS = {
    "page": ("GET", "/class-based", "", b""),
    "redirect": ("POST", "/checkout", "application/x-www-form-urlencoded", b"email=a%40b.c"),
    "beacon": (
        "POST",
        "/.pixelmirror/beacon",
        "application/json",
        json.dumps(beacon_body("http://127.0.0.1/")).encode(),
    ),
}


def wsgi_cookies(method: str, url: str, content_type: str, body: bytes) -> list[str]:
    env = environ(url, method, ORIGIN="http://127.0.0.1")
    env.update(CONTENT_TYPE=content_type, CONTENT_LENGTH=str(len(body)))
    env["wsgi.input"] = io.BytesIO(body)
    _, headers, _ = call(WSGIHandler(), env)
    return [value.strip() for value in header(headers, "Set-Cookie")]


async def asgi_cookies(method: str, url: str, content_type: str, body: bytes) -> list[str]:
    sent: list[dict[str, Any]] = []

    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays until Django has answered
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    fields = {
        "host": "127.0.0.1",
        "origin": "http://127.0.0.1",
        "user-agent": CHROME,
        "content-type": content_type,
        "content-length": str(len(body)),
    }
    scope = {
        "type": "http",
        "method": method,
        "path": url,
        "query_string": b"",
        "headers": [(name.encode(), value.encode()) for name, value in fields.items()],
        "client": ("203.0.113.9", 50000),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
    }
    await ASGIHandler()(scope, receive, send)
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    return [value.decode() for name, value in start["headers"] if name.lower() == b"set-cookie"]


@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
@pytest.mark.parametrize("kind", sorted(COOKIE_REQUESTS))
def test_cookies_go_out_byte_for_byte_through_djangos_handlers(
    site: FakeGraphAPI, monkeypatch: pytest.MonkeyPatch, kind: str, handler: str
) -> None:
    pages = get_mirror().pages
    made: list[str] = []
    plan, answer_beacon = pages.plan, pages.answer_beacon

    def planned(*args: Any, **kwargs: Any) -> Any:
        decided = plan(*args, **kwargs)
        made.extend(decided.cookies if decided is not None else ())
        return decided

    def answered(*args: Any, **kwargs: Any) -> Any:
        answer = answer_beacon(*args, **kwargs)
        made.extend(answer.cookies)
        return answer

    monkeypatch.setattr(pages, "plan", planned)
    monkeypatch.setattr(pages, "answer_beacon", answered)
    request = COOKIE_REQUESTS[kind]
    with override_settings(MIDDLEWARE=[PIXELMIRROR]):
        if handler == "wsgi":
            sent = wsgi_cookies(*request)
        else:
            sent = async_to_sync(asgi_cookies)(*request)
    assert made, "no cookies planned"
    if kind == "redirect":
        assert any(cookie.startswith("_pm_vid_ev=") for cookie in made)  # the carry cookie
    assert sent == made


def test_a_raw_cookie_survives_pickling_as_the_cache_middleware_does() -> None:
    value = "_pm_vid=abc.def; Path=/; Max-Age=10; HttpOnly; SameSite=Lax"
    cookie = pickle.loads(pickle.dumps(RawCookie(value)))
    assert cookie.output(header="").strip() == value
    assert (cookie.key, cookie.coded_value) == ("_pm_vid", "abc.def")


def test_a_host_django_refuses_passes_through_untouched(site: FakeGraphAPI) -> None:
    response = Browser("sync").get("/", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert MARKER not in response.content
    assert mirrored(site) == []
