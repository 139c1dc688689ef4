from __future__ import annotations

import gzip
import hashlib
import json
import random
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from conftest import PIXEL, SECRET, TOKEN, MakeMirror, record_outbox_calls
from pixelmirror import EVENTS_HEADER, ConfigError, PixelMirror, current_event, track
from pixelmirror.testing import FakeGraphAPI
from pixelmirror.web import environ as environ_reader
from pixelmirror.web import wsgi as wsgi_adapter
from pixelmirror.wsgi import EnvironHeaders, PixelMirrorWSGI, request_facts
from webkit import CHROME, HTML, browser_events, call, environ, header, page_external_id

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


Headers = list[tuple[str, str]]


class Body:
    """An app iterable that records ``close()`` and can fail mid-way."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for n, chunk in enumerate(self.chunks):
            if n == self.fail_after:
                raise RuntimeError("the app broke mid-body")
            yield chunk

    def close(self) -> None:
        self.closed = True


def app_returning(
    body: Body | list[bytes], status: str = "200 OK", headers: Headers | None = None
) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, headers if headers is not None else [("Content-Type", "text/html")])
        return body

    return app


def test_no_outbox_call_runs_on_the_request_thread(
    make_mirror: MakeMirror, fake: FakeGraphAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = make_mirror(outbox=f"sqlite:///{tmp_path / 'outbox.db'}")
    calls = record_outbox_calls(mirror.outbox, monkeypatch)
    request_thread = threading.get_ident()
    for _ in range(3):
        status, _, _ = call(mirror.wsgi(app_returning([HTML])))
        assert status == "200 OK"
    during_the_requests = list(calls)
    assert mirror.flush(timeout=10)
    assert [e.event_name for e in fake.events] == ["PageView"] * 3
    assert any(name == "write" for name, _ in calls)  # the writer did write, elsewhere
    assert [name for name, thread in during_the_requests if thread == request_thread] == []


def test_html_page_gets_the_pixel_and_its_pageview_is_mirrored(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    body = Body([HTML])
    app = app_returning(
        body, headers=[("Content-Type", "text/html"), ("Content-Length", str(len(HTML)))]
    )
    status, headers, page = call(mirror.wsgi(app))
    assert status == "200 OK"
    assert body.closed
    head, _, rest = page.partition(b"</head>")
    assert b"<script data-pixelmirror" in head
    assert rest == HTML.partition(b"</head>")[2]
    assert header(headers, "Content-Length") == [str(len(page))]
    assert header(headers, "Cache-Control")[0].startswith("private")
    cookies = header(headers, "Set-Cookie")
    assert any(c.startswith("_pm_vid=") and "HttpOnly" in c for c in cookies)
    assert any(c.startswith("_fbp=fb.") for c in cookies)

    assert mirror.flush(timeout=10)
    [(name, event_id)] = browser_events(page)
    (received,) = fake.events
    assert (received.event_name, received.event_id) == (name, event_id) == ("PageView", event_id)
    assert received.user_data["external_id"] == page_external_id(page)
    fbp = next(c for c in cookies if c.startswith("_fbp=")).split(";")[0].removeprefix("_fbp=")
    assert received.user_data["fbp"] == fbp
    assert received.user_data["client_ip_address"] == "203.0.113.9"
    assert received.user_data["client_user_agent"] == CHROME
    assert received.data["event_source_url"] == "http://127.0.0.1/"


def test_a_returning_visitor_keeps_its_id_and_gets_no_cookies(mirror: PixelMirror) -> None:
    app = mirror.wsgi(app_returning([HTML]))
    _, first_headers, first = call(app)
    jar = "; ".join(c.split(";")[0] for c in header(first_headers, "Set-Cookie"))
    _, headers, second = call(app, environ(COOKIE=jar))
    assert header(headers, "Set-Cookie") == []
    assert page_external_id(second) == page_external_id(first)
    assert browser_events(second)[0][1] != browser_events(first)[0][1]  # a new PageView id


@pytest.mark.parametrize(
    ("method", "status", "headers", "chunks"),
    [
        pytest.param(
            "GET", "200 OK", [("Content-Type", "application/json")], [b'{"a": 1}'], id="json"
        ),
        pytest.param(
            "GET",
            "200 OK",
            [("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
            [gzip.compress(HTML)],
            id="gzip-html",
        ),
        pytest.param("HEAD", "200 OK", [("Content-Type", "text/html")], [b""], id="head"),
        pytest.param("GET", "304 Not Modified", [("ETag", '"abc"')], [b""], id="304"),
        pytest.param(
            "GET",
            "200 OK",
            [("Content-Type", "text/html"), ("Content-Disposition", "attachment; filename=a.html")],
            [HTML],
            id="attachment",
        ),
        pytest.param(
            "GET",
            "200 OK",
            [("Content-Type", "text/html")],
            [b"<p>no head, no body</p>"],
            id="no-marker",
        ),
    ],
)
def test_ineligible_responses_come_out_byte_identical(
    mirror: PixelMirror,
    fake: FakeGraphAPI,
    method: str,
    status: str,
    headers: Headers,
    chunks: list[bytes],
) -> None:
    bare = call(app_returning(list(chunks), status, list(headers)), environ(method=method))
    body = Body(list(chunks))
    wrapped = call(mirror.wsgi(app_returning(body, status, list(headers))), environ(method=method))
    assert wrapped == bare
    assert body.closed
    assert mirror.flush(timeout=5)
    assert fake.events == []


def test_a_streamed_page_is_held_until_its_head_closes(mirror: PixelMirror) -> None:
    chunks = [b"<html><head>", b"<title>streamed</title>", b"</head><body>", b"rest</body></html>"]
    sent: list[bytes] = []
    started: list[int] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
        started.append(len(sent))
        return sent.append

    result = mirror.wsgi(app_returning(Body(chunks)))(environ(), start_response)
    for chunk in result:
        sent.append(chunk)
    result.close()  # type: ignore[attr-defined]
    assert started == [0]  # headers went out before the first byte, once
    assert sent[0].startswith(b"<html><head><title>streamed</title><script data-pixelmirror")
    assert sent[0].endswith(b"</head><body>")
    assert sent[1:] == [b"rest</body></html>"]


def test_an_error_page_replaces_a_held_page_untouched(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    error_page = b"<html><head></head><body>oops</body></html>"

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])  # held for the snippet
        try:
            raise RuntimeError("the view broke after starting")
        except RuntimeError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/html")], sys.exc_info()
            )
        return [error_page]

    status, headers, body = call(mirror.wsgi(app))
    assert (status, body) == ("500 Internal Server Error", error_page)
    assert headers == [("Content-Type", "text/html")]
    assert mirror.flush(timeout=5)
    assert fake.events == []  # no snippet went in: no PageView to mirror


def test_a_body_bigger_than_the_buffer_passes_through(make_mirror: MakeMirror) -> None:
    mirror = make_mirror(max_buffer=1024)
    chunks = [b"<html>" + b"x" * 800, b"y" * 800, b"<head></head><body></body></html>"]
    bare = call(app_returning(list(chunks)))
    assert call(mirror.wsgi(app_returning(list(chunks)))) == bare


def test_close_reaches_the_app_when_it_fails_mid_body(mirror: PixelMirror) -> None:
    body = Body([b"<html><head>", b"never"], fail_after=1)
    result = mirror.wsgi(app_returning(body))(environ(), lambda s, h, e=None: lambda d: None)
    with pytest.raises(RuntimeError, match="mid-body"):
        list(result)
    result.close()  # type: ignore[attr-defined]
    assert body.closed


def test_legacy_write_calls_are_kept_in_order(mirror: PixelMirror) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/html")])
        write(b"<html><head><title>w</title>")
        return [b"</head><body>written</body></html>"]

    _, _, page = call(mirror.wsgi(app))
    assert page.startswith(b"<html><head><title>w</title><script data-pixelmirror")
    assert page.endswith(
        b"</script></head><body>written</body></html>".replace(b"</script>", b"</noscript>")
    )


def test_file_wrapper_iterables_are_returned_untouched(mirror: PixelMirror) -> None:
    stream = Body([b"binary"])
    app = mirror.wsgi(app_returning(stream, headers=[("Content-Type", "image/png")]))
    result = app(environ(), lambda s, h, e=None: lambda d: None)
    assert result is stream


def tracked_app() -> Any:
    """A shop in plain WSGI: POST /checkout redirects, /thanks is a page, /api/cart is JSON."""

    @track("Purchase")
    def checkout(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        event = current_event()
        event.custom_data.update(value=49.99, currency="USD")
        event.user_data.update(email="ann@example.com")
        event.server_only.update(margin=12.5)
        start_response("303 See Other", [("Location", "/thanks")])
        return [b""]

    @track("AddToCart")
    def cart(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        routes = {"/checkout": checkout, "/api/cart": cart}
        route = routes.get(environ["PATH_INFO"])
        if route:
            return route(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/html")])
        return [HTML]

    return app


def test_a_purchase_behind_a_redirect_fires_on_the_next_page_with_the_same_id(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    app = mirror.wsgi(tracked_app())
    status, headers, _ = call(app, environ("/checkout", method="POST"))
    assert status == "303 See Other"
    jar = "; ".join(c.split(";")[0] for c in header(headers, "Set-Cookie"))
    assert "_pm_vid_ev=" in jar
    _, thanks_headers, page = call(app, environ("/thanks", COOKIE=jar))
    assert [name for name, _ in browser_events(page)] == ["PageView", "Purchase"]
    assert any(
        c.startswith("_pm_vid_ev=;") or "Max-Age=0" in c
        for c in header(thanks_headers, "Set-Cookie")
    )
    assert mirror.flush(timeout=10)
    server = {(e.event_name, e.event_id) for e in fake.events}
    assert set(browser_events(page)) <= server
    purchase = next(e for e in fake.events if e.event_name == "Purchase")
    assert purchase.custom_data == {"value": 49.99, "currency": "USD", "margin": 12.5}
    assert b"12.5" not in page
    assert b"ann@example.com" not in page
    assert purchase.user_data["em"] != "ann@example.com"
    assert len(purchase.user_data["em"]) == 64


def test_a_json_route_announces_its_events_in_a_header(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    _, headers, body = call(mirror.wsgi(tracked_app()), environ("/api/cart", method="POST"))
    assert body == b'{"ok": true}'
    (announced,) = json.loads(header(headers, EVENTS_HEADER)[0])
    assert announced["event"] == "AddToCart"
    assert mirror.flush(timeout=10)
    assert [(e.event_name, e.event_id) for e in fake.events] == [
        ("AddToCart", announced["eventID"])
    ]


@pytest.mark.parametrize(
    ("settings", "headers"),
    [
        pytest.param({}, {"USER_AGENT": "facebookexternalhit/1.1"}, id="meta-crawler"),
        pytest.param(
            {}, {"USER_AGENT": "Googlebot/2.1 (+http://www.google.com/bot.html)"}, id="googlebot"
        ),
        pytest.param({"pixel_id": None}, {}, id="no-pixel-id"),
    ],
)
def test_pages_pass_untouched_for_bots_and_without_a_pixel(
    make_mirror: MakeMirror, fake: FakeGraphAPI, settings: dict[str, Any], headers: dict[str, str]
) -> None:
    mirror = make_mirror(**settings)
    env = environ(**headers)
    assert call(mirror.wsgi(tracked_app()), env) == call(tracked_app(), env)
    call(mirror.wsgi(tracked_app()), environ("/checkout", method="POST", **headers))
    assert mirror.flush(timeout=5)
    assert fake.events == []


@pytest.mark.parametrize("cookie", [None, "consent=no"], ids=["no-consent", "refused"])
def test_pages_without_consent_are_pending_and_mirror_nothing(
    make_mirror: MakeMirror, fake: FakeGraphAPI, cookie: str | None
) -> None:
    mirror = make_mirror(consent_cookie="consent=yes")
    env = environ(**({"COOKIE": cookie} if cookie else {}))
    status, headers, page = call(mirror.wsgi(tracked_app()), env)
    assert status == call(tracked_app(), env)[0]
    assert header(headers, "Set-Cookie") == []
    assert b'"pending":true' in page
    assert browser_events(page) == []
    call(mirror.wsgi(tracked_app()), environ("/checkout", method="POST", COOKIE=cookie or ""))
    assert mirror.flush(timeout=5)
    assert fake.events == []


def test_consent_granted_by_cookie(make_mirror: MakeMirror) -> None:
    mirror = make_mirror(consent_cookie="consent=yes")
    _, _, page = call(mirror.wsgi(tracked_app()), environ(COOKIE="consent=yes"))
    assert browser_events(page)


def test_an_internal_failure_serves_the_page_untouched(
    mirror: PixelMirror, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("pixelmirror bug")

    monkeypatch.setattr(mirror.pages, "plan", broken)
    assert call(mirror.wsgi(tracked_app())) == call(tracked_app())
    assert "planning the response failed" in caplog.text
    monkeypatch.setattr(mirror.pages, "begin", broken)
    assert call(mirror.wsgi(tracked_app())) == call(tracked_app())


def flask_home(mirror: PixelMirror) -> Any:
    """A Flask app serving :data:`HTML` at ``/``, set up with ``mirror.init_app``."""
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.get("/")
    def home() -> str:
        return HTML.decode()

    mirror.init_app(app)
    return app


def test_flask_init_app(mirror: PixelMirror) -> None:
    app = flask_home(mirror)
    assert isinstance(app.wsgi_app, PixelMirrorWSGI)
    assert app.extensions["pixelmirror"] is mirror
    response = app.test_client().get("/", headers={"User-Agent": CHROME})
    assert [name for name, _ in browser_events(response.data)] == ["PageView"]


def test_flask_init_app_reads_the_apps_config_over_the_environment(
    fake: FakeGraphAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    flask = pytest.importorskip("flask")
    monkeypatch.setenv("PIXELMIRROR_SECRET_KEY", SECRET)
    monkeypatch.setenv("PIXELMIRROR_PIXEL_ID", "999")
    monkeypatch.setenv("PIXELMIRROR_COOKIE_SECURE", "false")
    # Built before the app exists (an extensions module), with a keyword of its own.
    mirror = PixelMirror(transport=fake.transport, flush_interval=0.05)
    try:
        assert mirror.dry_run
        app = flask.Flask(__name__)
        app.config.update(
            PIXELMIRROR_PIXEL_ID=PIXEL,
            PIXELMIRROR_ACCESS_TOKEN=TOKEN,
            PIXELMIRROR_FLUSH_INTERVAL="9",  # the mirror's own keyword wins
            PIXELMIRROR_LDU=True,  # a Python value, taken as it is
            SECRET_KEY="flask's own",
        )

        @app.get("/")
        def home() -> str:
            return HTML.decode()

        mirror.init_app(app)
        config = mirror.config
        assert (config.pixel_id, config.access_token) == (PIXEL, TOKEN)
        assert config.secret_key == (SECRET,)  # from the environment
        assert config.flush_interval == 0.05
        assert config.ldu is True
        assert not mirror.dry_run
        response = app.test_client().get("/", headers={"User-Agent": CHROME})
        assert [name for name, _ in browser_events(response.data)] == ["PageView"]
        assert mirror.flush(timeout=10)
        assert [(e.pixel_id, e.event_name) for e in fake.events] == [(PIXEL, "PageView")]
    finally:
        mirror.close(timeout=1)


def test_init_app_keeps_a_mirror_built_from_a_whole_config(make_mirror: MakeMirror) -> None:
    flask = pytest.importorskip("flask")
    from pixelmirror.config import Config

    config = Config(pixel_id=PIXEL, secret_key=(SECRET,), cookie_secure=False)
    mirror = PixelMirror(config)
    try:
        app = flask.Flask(__name__)
        app.config["PIXELMIRROR_PIXEL_ID"] = "999"
        mirror.init_app(app)
        assert mirror.config is config
    finally:
        mirror.close(timeout=1)


def test_flask_identify_hook_reads_the_session(make_mirror: MakeMirror, fake: FakeGraphAPI) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    app.secret_key = "session signing key for the test"

    @app.post("/login")
    def login() -> str:
        flask.session["email"] = "ann@example.com"
        return "ok"

    @app.get("/")
    @track("ViewContent")
    def home() -> str:
        return HTML.decode()

    mirror = make_mirror(identify=lambda facts: {"email": flask.session.get("email")})
    mirror.init_app(app)
    client = app.test_client()
    client.post("/login", headers={"User-Agent": CHROME})
    response = client.get("/", headers={"User-Agent": CHROME})
    assert len(browser_events(response.data)) == 2
    assert mirror.flush(timeout=10)
    hashed = hashlib.sha256(b"ann@example.com").hexdigest()
    assert sorted(e.event_name for e in fake.events) == ["PageView", "ViewContent"]
    assert [e.user_data["em"] for e in fake.events] == [hashed] * 2


def test_a_test_client_that_reads_the_body_without_closing_it_sees_the_server_copy(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    app = flask_home(mirror)
    response = app.test_client().get("/", headers={"User-Agent": CHROME})
    ((_, event_id),) = browser_events(response.data)  # read, never closed
    assert mirror.flush(timeout=10)
    assert [(e.event_name, e.event_id) for e in fake.events] == [("PageView", event_id)]
    response.close()
    assert mirror.flush(timeout=10)
    assert len(fake.events) == 1  # closing later mirrors nothing twice


def test_an_exhausted_body_is_mirrored_once_whether_or_not_it_is_closed(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    body = mirror.wsgi(tracked_app())(environ(), lambda status, headers, exc_info=None: None)
    assert b"".join(body) != b""
    assert mirror.flush(timeout=10)
    assert [e.event_name for e in fake.events] == ["PageView"]
    close = getattr(body, "close", None)
    assert close is not None
    close()
    assert mirror.flush(timeout=10)
    assert [e.event_name for e in fake.events] == ["PageView"]


def test_a_fragment_without_head_or_body_announces_its_events_in_the_header(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    @track("AddToCart")
    def fragment(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b'<div id="cart">1 item</div>']

    _, headers, body = call(mirror.wsgi(fragment), environ(method="POST"))
    assert body == b'<div id="cart">1 item</div>'
    (announced,) = json.loads(header(headers, EVENTS_HEADER)[0])
    assert mirror.flush(timeout=10)
    assert fake.event_ids() == [announced["eventID"]]


def test_invalid_app_data_is_counted_not_lost_silently(
    mirror: PixelMirror, fake: FakeGraphAPI, caplog: pytest.LogCaptureFixture
) -> None:
    @track("Purchase")
    def view(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        current_event().custom_data.update(value="49.99", currency="USD")  # text, from a form
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    call(mirror.wsgi(view), environ(method="POST"))
    assert mirror.flush(timeout=5)
    assert fake.events == []
    assert mirror.stats().invalid == 1
    assert "Purchase" in caplog.text
    assert "must be a number" in caplog.text


def test_without_a_pixel_the_middleware_says_so_once(
    make_mirror: MakeMirror, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = make_mirror(pixel_id=None)
    app = mirror.wsgi(tracked_app())
    assert caplog.text.count("pages pass through untouched") == 1
    assert call(app) == call(tracked_app())


def test_a_missing_signing_key_fails_at_start_up(make_mirror: MakeMirror) -> None:
    mirror = make_mirror(secret_key=())
    with pytest.raises(ConfigError, match="PIXELMIRROR_SECRET_KEY is required"):
        mirror.wsgi(tracked_app())


def test_a_request_path_is_what_quote_makes_of_it_byte_for_byte() -> None:
    # request_facts leaves a path that quote() would not change as it is: the same text.
    rng = random.Random(12)
    kept = "azAZ09_.-~/:@!$&'()*+,;=%"
    changed = '?#[] "<>\\^`{|}\t\x7f\x80\xe9\xff'
    for _ in range(5000):
        alphabet = kept if rng.random() < 0.5 else kept + changed
        script = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        env = {"SCRIPT_NAME": script, "PATH_INFO": path, "HTTP_HOST": "shop.test"}
        expected = quote((script + path).encode("latin-1"), safe="/:@!$&'()*+,;=%~") or "/"
        assert request_facts(env).path == expected


def test_environ_headers_get_and_in_answer_as_a_mapping_does() -> None:
    env = {"HTTP_REFERER": "https://a.test/", "CONTENT_TYPE": "text/html", "HTTP_X_ODD": 3}
    headers = EnvironHeaders(env)  # type: ignore[arg-type]
    for name in ("referer", "Referer", "content-type", "x-odd", "sec-gpc", "forwarded"):
        assert headers.get(name) == Mapping.get(headers, name)
        assert headers.get(name, "-") == Mapping.get(headers, name, "-")
        assert (name in headers) == Mapping.__contains__(headers, name)


@pytest.mark.parametrize("seed", range(3))
def test_header_keys_and_status_codes_through_their_caches_as_without_them(seed: int) -> None:
    rng = random.Random(seed)
    names = ["referer", "Referer", "content-type", "CONTENT-LENGTH", "x-odd", "sec_gpc", "", "é"]
    statuses = ["200 OK", "404 Not Found", "500", "20", "abc", "301 Moved", ""]
    for _ in range(500):
        name = "".join(rng.choice(names) for _ in range(rng.randint(1, 2)))
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        env = {key: "v"} if rng.random() < 0.5 else {key: 3}
        expected = env[key] if isinstance(env[key], str) else None
        headers = EnvironHeaders(env)  # type: ignore[arg-type]
        assert headers.get(name) == expected
        assert (name in headers) == (expected is not None)
        status = rng.choice(statuses)
        try:
            code = int(status[:3])
        except ValueError:
            code = 500
        assert wsgi_adapter._status_code(status) == code
        assert wsgi_adapter._STATUS_CODES[status] == code
        if rng.random() < 0.1:  # now and then, names the caches have not seen yet
            environ_reader._KEYS.clear()
            wsgi_adapter._STATUS_CODES.clear()


@pytest.mark.parametrize("seed", range(3))
def test_a_page_let_go_of_streams_the_rest_as_the_app_made_it(
    make_mirror: MakeMirror, seed: int
) -> None:
    rng = random.Random(seed)
    mirror = make_mirror(max_buffer=1024)
    pieces = [
        b"<html>",
        b"<head>",
        b"<title>t</title>",
        b"</he",
        b"ad>",
        b"<body>",
        b"x" * 400,
        b"",
    ]
    for _ in range(100):
        chunks = [rng.choice(pieces) for _ in range(rng.randint(0, 10))]
        sent: list[bytes] = []
        started: list[int] = []

        def start_response(
            status: str,
            headers: Headers,
            exc_info: Any = None,
            sent: list[bytes] = sent,
            started: list[int] = started,
        ) -> Any:
            started.append(len(sent))
            return sent.append

        body = Body(list(chunks))
        result = mirror.wsgi(app_returning(body))(environ(), start_response)
        sent.extend(result)
        result.close()  # type: ignore[attr-defined]
        assert body.closed
        assert started == [0]
        assert b"" not in sent
        page = b"".join(chunks)
        out = b"".join(sent)
        if out != page:  # the snippet went in, once, where the scanner put it
            at = out.index(b"<script data-pixelmirror")
            snippet = out[at : at + len(out) - len(page)]
            assert out.replace(snippet, b"") == page
        # After the first bytes sent, the app's own chunks, as they came (empty ones left out).
        assert any(sent[1:] == [c for c in chunks[k:] if c] for k in range(len(chunks) + 1)), (
            chunks,
            sent,
        )
