from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest

from conftest import PIXEL, MakeMirror
from pixelmirror import PixelMirror, current_event, track
from pixelmirror.beacon import MAX_BODY, RateLimiter, ip_budget_key
from pixelmirror.testing import FakeGraphAPI
from webkit import HTML, Headers, call, environ, header

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


ORIGIN = "http://127.0.0.1"  # what wsgiref's testing defaults make of the request
BEACON = "/.pixelmirror/beacon"


@track("Purchase")
def checkout(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    current_event().custom_data.update(value=20, currency="USD")
    current_event().server_only.update(margin=5)
    start_response("303 See Other", [("Location", "/thanks")])
    return [b""]


def shop(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/checkout":
        return checkout(environ, start_response)
    start_response(
        "200 OK", [("Content-Type", "text/html"), ("Cache-Control", "public, max-age=60")]
    )
    return [HTML]


@pytest.fixture
def beacon_mirror(make_mirror: MakeMirror) -> PixelMirror:
    return make_mirror(mode="beacon", beacon_rate=30)


def beacon(
    app: Any,
    payload: object,
    *,
    origin: str | None = ORIGIN,
    cookie: str | None = None,
    raw: bytes | None = None,
    method: str = "POST",
    peer: str | None = None,
    **headers: str,
) -> tuple[int, Headers, bytes]:
    body = raw if raw is not None else json.dumps(payload).encode()
    extra = dict(headers)
    if origin is not None:
        extra["ORIGIN"] = origin
    if cookie is not None:
        extra["COOKIE"] = cookie
    env = environ(BEACON, method=method, **extra)
    if peer is not None:
        env["REMOTE_ADDR"] = peer
    env["wsgi.input"] = io.BytesIO(body)
    env["CONTENT_LENGTH"] = str(len(body))
    env["CONTENT_TYPE"] = "application/json"
    status, response_headers, answer = call(app, env)
    return int(status[:3]), response_headers, answer


def page_view(url: str = f"{ORIGIN}/") -> dict[str, object]:
    return {"url": url, "referrer": "", "events": [{"event": "PageView"}]}


def jar(headers: Headers) -> str:
    return "; ".join(c.split(";")[0] for c in header(headers, "Set-Cookie"))


def test_the_page_is_the_same_bytes_for_everyone_and_the_beacon_mints_the_ids(
    beacon_mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    app = beacon_mirror.wsgi(shop)
    first = call(app, environ("/"))
    second = call(app, environ("/", COOKIE="_pm_vid=someone-else; _fbp=fb.1.1.2"))
    assert first == second  # status, headers and body byte-identical
    _, headers, page = first
    assert header(headers, "Set-Cookie") == []
    assert header(headers, "Cache-Control") == ["public, max-age=60"]  # the app's caching kept
    assert b"<script data-pixelmirror" in page
    assert b'"eventID":"' not in page  # no id of anyone's
    assert b'"external_id":"' not in page

    answers = []
    for _ in range(2):  # two visitors, no cookies yet
        status, beacon_headers, body = beacon(app, page_view())
        assert status == 200
        assert header(beacon_headers, "Cache-Control") == ["no-store"]
        assert any(c.startswith("_pm_vid=") for c in header(beacon_headers, "Set-Cookie"))
        answers.append(json.loads(body))
    assert beacon_mirror.flush(timeout=10)
    ids = [answer["events"][0]["eventID"] for answer in answers]
    assert ids[0] != ids[1]
    assert sorted(fake.event_ids()) == sorted(ids)
    assert {e.user_data["external_id"] for e in fake.events} == {a["external_id"] for a in answers}
    assert all(e.data["event_source_url"] == f"{ORIGIN}/" for e in fake.events)
    assert {e.pixel_id for e in fake.events} == {PIXEL}


def test_a_purchase_behind_a_redirect_comes_back_through_the_beacon(
    beacon_mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    app = beacon_mirror.wsgi(shop)
    _, headers, _ = call(app, environ("/checkout", method="POST"))
    status, beacon_headers, body = beacon(app, page_view(f"{ORIGIN}/thanks"), cookie=jar(headers))
    assert status == 200
    fired = json.loads(body)["events"]
    assert [e["event"] for e in fired] == ["PageView", "Purchase"]
    assert fired[1]["custom_data"] == {"value": 20, "currency": "USD"}  # margin stays server-side
    assert any("Max-Age=0" in c for c in header(beacon_headers, "Set-Cookie"))  # carried once
    assert beacon_mirror.flush(timeout=10)
    assert {(e.event_name, e.event_id) for e in fake.events} == {
        (e["event"], e["eventID"]) for e in fired
    }


def test_the_js_api_may_send_allowed_events_with_data(
    beacon_mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    payload = {
        "url": f"{ORIGIN}/search?q=tee",
        "referrer": f"{ORIGIN}/",
        "events": [{"event": "Search", "custom_data": {"search_string": "tee"}}],
    }
    status, _, body = beacon(beacon_mirror.wsgi(shop), payload)
    assert status == 200
    assert beacon_mirror.flush(timeout=10)
    (received,) = fake.events
    assert received.event_id == json.loads(body)["events"][0]["eventID"]
    assert received.custom_data == {"search_string": "tee"}
    assert received.data["event_source_url"] == f"{ORIGIN}/search?q=tee"
    assert received.data["referrer_url"] == f"{ORIGIN}/"


@pytest.mark.parametrize(
    ("request_options", "status", "reason"),
    [
        pytest.param({"method": "GET"}, 405, "POST only", id="get"),
        pytest.param({"origin": "https://evil.example"}, 403, "cross-origin", id="cross-origin"),
        pytest.param({"origin": None}, 403, "same-origin", id="no-origin"),
        pytest.param(
            {"origin": None, "SEC_FETCH_SITE": "cross-site"}, 403, "same-origin", id="cross-site"
        ),
        pytest.param({"raw": b"x" * (MAX_BODY + 10)}, 413, "body over", id="too-big"),
        pytest.param({"raw": b"{not json"}, 400, "not JSON", id="not-json"),
        pytest.param({"raw": b"[]"}, 400, "JSON object", id="not-an-object"),
        pytest.param(
            {"payload": page_view("https://evil.example/")},
            400,
            "page of this site",
            id="foreign-url",
        ),
        pytest.param(
            {"payload": {"url": f"{ORIGIN}/", "events": [{"event": "Purchase"}]}},
            400,
            "not allowed from the browser",
            id="purchase-forged",
        ),
        pytest.param(
            {"payload": {"url": f"{ORIGIN}/", "events": [{"event": "PageView"}] * 11}},
            400,
            "list of 1 to 10",
            id="too-many-events",
        ),
        pytest.param(
            {"payload": {"url": f"{ORIGIN}/", "events": []}}, 400, "list of 1 to 10", id="no-events"
        ),
        pytest.param(
            {
                "payload": {
                    "url": f"{ORIGIN}/",
                    "events": [{"event": "Search", "custom_data": {"q": "x" * 3000}}],
                }
            },
            413,
            "custom_data over",
            id="custom-data-too-big",
        ),
        pytest.param({"USER_AGENT": "Googlebot/2.1"}, 403, "crawler", id="bot"),
    ],
)
def test_abuse_gets_a_4xx_and_never_reaches_the_outbox(
    beacon_mirror: PixelMirror,
    fake: FakeGraphAPI,
    request_options: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    options = dict(request_options)
    payload = options.pop("payload", page_view())
    answer_status, headers, body = beacon(beacon_mirror.wsgi(shop), payload, **options)
    assert (answer_status, reason in body.decode()) == (status, True)
    assert header(headers, "Set-Cookie") == []
    assert beacon_mirror.flush(timeout=5)
    assert beacon_mirror.stats().queued == 0
    assert fake.events == []


@pytest.mark.parametrize(
    "custom_data",
    [
        pytest.param(b'{"value": NaN}', id="nan"),
        pytest.param(b'{"value": Infinity}', id="infinity"),
        pytest.param(b'{"value": -Infinity}', id="minus-infinity"),
        pytest.param(b'{"contents": [{"item_price": NaN}]}', id="nested-nan"),
        pytest.param(b'{"a": {"b": [1, {"c": -Infinity}]}}', id="nested-minus-infinity"),
        pytest.param(b'{"value": 1e999}', id="overflowing-float"),
        pytest.param(b'{"value": -1e999}', id="overflowing-negative-float"),
    ],
)
def test_nan_and_infinity_in_custom_data_get_a_400(
    beacon_mirror: PixelMirror, fake: FakeGraphAPI, custom_data: bytes
) -> None:
    body = (
        b'{"url": "' + ORIGIN.encode() + b'/", "referrer": "", '
        b'"events": [{"event": "ViewContent", "custom_data": ' + custom_data + b"}]}"
    )
    status, headers, answer = beacon(beacon_mirror.wsgi(shop), None, raw=body)
    assert status == 400
    assert b"number" in answer
    assert header(headers, "Set-Cookie") == []
    assert beacon_mirror.flush(timeout=5)
    assert beacon_mirror.stats().queued == 0
    assert fake.events == []


def test_finite_numbers_in_custom_data_are_kept(beacon_mirror: PixelMirror) -> None:
    body = (
        b'{"url": "' + ORIGIN.encode() + b'/", "referrer": "", '
        b'"events": [{"event": "ViewContent", "custom_data": {"value": 1.5e300, "n": -0.0}}]}'
    )
    status, _, answer = beacon(beacon_mirror.wsgi(shop), None, raw=body)
    assert status == 200
    assert json.loads(answer)["events"][0]["custom_data"] == {"value": 1.5e300, "n": -0.0}


def test_no_consent_no_beacon(make_mirror: MakeMirror, fake: FakeGraphAPI) -> None:
    mirror = make_mirror(mode="beacon", consent_cookie="consent=yes")
    app = mirror.wsgi(shop)
    assert beacon(app, page_view())[0] == 403
    assert beacon(app, page_view(), cookie="consent=yes")[0] == 200


def test_rate_limits_per_visitor_and_per_ip(make_mirror: MakeMirror) -> None:
    mirror = make_mirror(mode="beacon", beacon_rate=3)
    app = mirror.wsgi(shop)
    _, headers, _ = beacon(app, page_view())
    cookie = jar(headers)
    statuses = [beacon(app, page_view(), cookie=cookie)[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # the visitor's 3 per minute are used up
    # New visitors from the same IP share its budget of 5 x 3.
    statuses = [beacon(app, page_view())[0] for _ in range(13)]
    assert statuses.count(429) >= 1


def _accepted(app: Any, peers: Iterable[str]) -> list[int]:
    return [beacon(app, page_view(), peer=peer)[0] for peer in peers]


# The per-IP budget at beacon_rate=3 is 15 a minute. It refills by one every 4 seconds, so a
# slow machine may see one or two more accepted: far from the 200 an unlimited key gets.
IP_BUDGET = 15


def _limited_like_one_address(statuses: list[int]) -> bool:
    return statuses[:IP_BUDGET] == [200] * IP_BUDGET and statuses.count(200) < 2 * IP_BUDGET


def test_an_ipv6_host_walking_its_64_is_limited_like_one_address(make_mirror: MakeMirror) -> None:
    mirror = make_mirror(mode="beacon", beacon_rate=3)
    app = mirror.wsgi(shop)
    one_64 = [f"2001:db8:1:2:{n:x}:{7 * n:x}:{n:x}:1" for n in range(1, 201)]
    assert len(set(one_64)) == 200
    assert _limited_like_one_address(_accepted(app, one_64))
    # Another /64 is another host, with a budget of its own.
    assert _limited_like_one_address(_accepted(app, ["2001:db8:1:3::1"] * 200))
    # And one IPv4 address gets the same as the whole /64 did.
    assert _limited_like_one_address(_accepted(app, ["198.51.100.7"] * 200))


def test_an_ipv4_mapped_address_shares_the_ipv4_budget(make_mirror: MakeMirror) -> None:
    mirror = make_mirror(mode="beacon", beacon_rate=3)
    app = mirror.wsgi(shop)
    peers = ["198.51.100.7", "::ffff:198.51.100.7", "::ffff:c633:6407"] * 70
    assert _limited_like_one_address(_accepted(app, peers))


@pytest.mark.parametrize(
    ("client_ip", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        (None, "-"),
        ("not an address", "not an address"),
    ],
)
def test_the_ip_budget_is_kept_by_ipv4_address_or_ipv6_64(client_ip: str | None, key: str) -> None:
    assert ip_budget_key(client_ip) == key


def test_rate_limiter_refills_and_forgets_old_keys() -> None:
    limiter = RateLimiter(60, max_keys=2)
    assert limiter.allow("a", 60, now=0.0)
    assert not limiter.allow("a", 1, now=0.0)
    assert limiter.allow("a", 1, now=1.0)  # one token a second
    limiter.allow("b", now=1.0)
    limiter.allow("c", now=1.0)  # "a" is forgotten: a fresh bucket
    assert limiter.allow("a", 60, now=1.0)


def test_a_tracked_page_in_beacon_mode_carries_its_events_to_the_beacon(
    beacon_mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    @track("ViewContent")
    def product(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [HTML]

    app = beacon_mirror.wsgi(product)
    _, headers, page = call(app, environ("/product"))
    assert b'"eventID":"' not in page
    status, _, body = beacon(app, page_view(f"{ORIGIN}/product"), cookie=jar(headers))
    assert status == 200
    assert [e["event"] for e in json.loads(body)["events"]] == ["PageView", "ViewContent"]
    assert beacon_mirror.flush(timeout=10)
    assert sorted(e.event_name for e in fake.events) == ["PageView", "ViewContent"]


def test_in_beacon_mode_everyone_gets_the_same_page_and_only_the_beacon_gates(
    make_mirror: MakeMirror, fake: FakeGraphAPI
) -> None:
    mirror = make_mirror(mode="beacon", consent_cookie="consent=yes")
    app = mirror.wsgi(shop)
    consenting = call(app, environ("/", COOKIE="consent=yes"))
    assert call(app, environ("/")) == consenting  # a shared cache cannot mix them up
    assert call(app, environ("/", USER_AGENT="Googlebot/2.1")) == consenting
    page = consenting[2]
    assert b"<noscript>" not in page  # gated: nothing fires without the beacon's yes
    assert b'"fallback":false' in page


def test_a_beacon_nested_too_deep_is_refused(beacon_mirror: PixelMirror) -> None:
    status, _, body = beacon(beacon_mirror.wsgi(shop), None, raw=b"[" * 7000)
    assert (status, body) == (400, b"beacon body is not JSON")


def test_a_failing_beacon_answers_500_and_never_reaches_the_app(
    beacon_mirror: PixelMirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("pixelmirror bug")

    monkeypatch.setattr(beacon_mirror.pages, "answer_beacon", broken)
    status, _, _ = beacon(beacon_mirror.wsgi(shop), page_view())
    assert status == 500
