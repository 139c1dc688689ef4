"""A platform sending for many advertisers: accounts per host, tokens per pixel, several
pixels per page, partner attribution, and a connection check per customer."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest

from conftest import SECRET
from pixelmirror import PixelMirror, current_event, track
from pixelmirror.accounts import Account, HostAccounts
from pixelmirror.testing import FakeGraphAPI
from webkit import HTML, call, environ

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


AGENT = "acmeplatform"
TOKENS = {"111": "tok-alpha", "222": "tok-beta", "333": "tok-beta", "444": "tok-gamma-new"}


@track("Purchase")
def checkout(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    current_event().custom_data.update(value=9, currency="EUR")
    start_response("200 OK", [("Content-Type", "text/html")])
    return [HTML]


@track("Lead", pixel_id="333")
def lead(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html")])
    return [HTML]


def platform(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    routes = {"/checkout": checkout, "/lead": lead}
    return routes.get(environ["PATH_INFO"], checkout)(environ, start_response)


ACCOUNTS = HostAccounts(
    {
        "alpha.example": "111",
        "beta.example": Account(("222", "333"), test_event_code="TEST22"),
        "gamma.example": Account(("444",), partner_agent="gammaagent"),
    }
)


def inits(page: bytes) -> list[list[Any]]:
    return [
        json.loads("[" + line[len("fbq(") : -len(");")] + "]")
        for line in page.decode().split("\n")
        if line.startswith('fbq("init"')
    ]


@pytest.fixture
def resolver() -> dict[str, str]:
    # gamma's customer revoked the token the platform holds; it will paste a new one later.
    return {**TOKENS, "444": "tok-gamma-revoked"}


@pytest.fixture
def platform_mirror(resolver: dict[str, str]) -> Iterable[tuple[PixelMirror, FakeGraphAPI]]:
    fake = FakeGraphAPI(access_tokens={pixel: {token} for pixel, token in TOKENS.items()})
    mirror = PixelMirror(
        accounts=ACCOUNTS,
        tokens=resolver.get,
        transport=fake.transport,
        secret_key=SECRET,
        cookie_secure=False,
        partner_agent=AGENT,
        flush_interval=0.05,
    )
    assert mirror.dispatcher is not None
    mirror.dispatcher.token_recheck = 0.2  # a rotated token is noticed within seconds: here, soon
    yield mirror, fake
    mirror.close(timeout=1)


def test_three_tenants_each_get_their_pixels_and_their_tokens(
    platform_mirror: tuple[PixelMirror, FakeGraphAPI], resolver: dict[str, str]
) -> None:
    mirror, fake = platform_mirror
    app = mirror.wsgi(platform)
    pages = {
        host: call(app, environ("/checkout", HOST=host))[2]
        for host in ("alpha.example", "beta.example", "gamma.example", "other.example")
    }
    assert [i[1] for i in inits(pages["alpha.example"])] == ["111"]
    assert [i[1] for i in inits(pages["beta.example"])] == ["222", "333"]
    assert [i[1] for i in inits(pages["gamma.example"])] == ["444"]
    assert inits(pages["gamma.example"])[0][3] == {"agent": "gammaagent"}
    assert inits(pages["alpha.example"])[0][3] == {"agent": AGENT}
    assert pages["other.example"] == HTML  # no account: untouched
    # Each event fires once in the browser: track reaches every initialised pixel.
    assert pages["beta.example"].decode().count('fbq("track","Purchase"') == 1

    # alpha and beta flow; gamma's revoked token pauses gamma alone.
    assert not mirror.flush(timeout=1.5)
    received = collections.Counter((e.pixel_id, e.event_name) for e in fake.events)
    assert received == {
        ("111", "PageView"): 1,
        ("111", "Purchase"): 1,
        ("222", "PageView"): 1,
        ("222", "Purchase"): 1,
        ("333", "PageView"): 1,
        ("333", "Purchase"): 1,
    }
    stats = mirror.stats()
    assert stats.paused_pixels == ("444",)
    assert stats.pending == 2  # gamma's PageView and Purchase wait, not dropped
    assert stats.pixels["444"] == {"queued": 2, "sent": 0, "retried": 0, "dead": 0}
    assert stats.pixels["222"]["sent"] == 2

    beta = [e for e in fake.events if e.pixel_id in ("222", "333")]
    assert {e.access_token for e in beta} == {"tok-beta"}
    assert {e.test_event_code for e in beta} == {"TEST22"}
    assert {e.partner_agent for e in fake.events} == {AGENT}
    # The same ids on both pixels of a page: one event, mirrored once per pixel.
    assert len({e.event_id for e in beta if e.event_name == "Purchase"}) == 1

    resolver["444"] = "tok-gamma-new"  # the customer rotated the token; no restart needed
    assert mirror.flush(timeout=10)
    gamma = [e for e in fake.events if e.pixel_id == "444"]
    assert sorted(e.event_name for e in gamma) == ["PageView", "Purchase"]
    assert {e.access_token for e in gamma} == {"tok-gamma-new"}
    assert mirror.stats().paused_pixels == ()


def test_an_event_for_one_pixel_only_uses_track_single(
    platform_mirror: tuple[PixelMirror, FakeGraphAPI],
) -> None:
    mirror, fake = platform_mirror
    _, _, page = call(mirror.wsgi(platform), environ("/lead", HOST="beta.example"))
    assert 'fbq("trackSingle","333","Lead"' in page.decode()
    assert mirror.flush(timeout=10)
    assert [(e.pixel_id, e.event_name) for e in fake.events if e.event_name == "Lead"] == [
        ("333", "Lead")
    ]


@pytest.mark.parametrize(
    ("pixel_id", "ok", "hint"),
    [
        pytest.param("111", True, None, id="good"),
        pytest.param("444", False, "access token is invalid", id="revoked-token"),
        pytest.param("999", False, "token resolver", id="no-token"),
    ],
)
def test_check_per_customer(
    platform_mirror: tuple[PixelMirror, FakeGraphAPI], pixel_id: str, ok: bool, hint: str | None
) -> None:
    mirror, _ = platform_mirror
    result = mirror.check(pixel_id, test_event_code="TEST1")
    assert result.ok is ok
    if hint:
        assert hint in f"{result.error} {result.hint}"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"pixel_ids": ()}, "pixel ids of digits", id="no-pixels"),
        pytest.param({"pixel_ids": ("12a",)}, "pixel ids of digits", id="not-digits"),
        pytest.param({"pixel_ids": ("1", "1")}, "twice", id="duplicate"),
        pytest.param({"pixel_ids": ("1",), "partner_agent": "x" * 23}, "partner_agent", id="agent"),
    ],
)
def test_bad_accounts_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Account(**arguments)
