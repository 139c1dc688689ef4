from __future__ import annotations

import json
import logging
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from pixelmirror import _domains
from pixelmirror.config import Config, ConfigError
from pixelmirror.facts import RequestFacts
from pixelmirror.fbcookies import FB_MAX_AGE
from pixelmirror.identity import (
    CARRY_MAX_BYTES,
    CARRY_SALT,
    VISITOR_SALT,
    Identity,
    Visitor,
    is_crawler,
)
from pixelmirror.mirror import PixelMirror
from pixelmirror.normalize import sha256_hex

KEY = "k" * 32
OLD_KEY = "o" * 32
OTHER_KEY = "x" * 32
NOW = 1_700_000_000.0
MAX_AGE = 34_000_000
VID = "AbCdEfGhIjKlMnOpQrSt_-"  # the shape of secrets.token_urlsafe(16)
FBP = "fb.1.1699999990000.1234567890"
FBC = "fb.1.1699999990000.IwAR1AbC"

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
IOS_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.6367.29 Safari/537.36"
)


def make(
    consent: Callable[[RequestFacts], bool] | None = None,
    *,
    is_bot: Callable[[RequestFacts], bool] | None = None,
    **settings: Any,
) -> Identity:
    settings.setdefault("secret_key", (KEY, OLD_KEY))
    return Identity(Config(pixel_id="1", **settings), consent=consent, is_bot=is_bot)


def request(
    *,
    cookies: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    ua: str | None = CHROME,
    scheme: str = "https",
    host: str = "www.example.com",
    path: str = "/shop",
    query: str = "",
    peer: str | None = "203.0.113.9",
) -> RequestFacts:
    all_headers = {"user-agent": ua} if ua is not None else {}
    if cookies:
        all_headers["cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    all_headers.update(headers or {})
    return RequestFacts("GET", scheme, host, path, query, all_headers, peer)


def resolve(identity: Identity | None = None, **facts: Any) -> Visitor:
    visitor = (identity or make()).resolve(request(**facts), now=NOW)
    assert visitor is not None
    return visitor


class _SignerAt(TimestampSigner):
    """itsdangerous' own signer with a fixed clock: tokens made the library's way."""

    def __init__(self, key: str, at: float, salt: str = VISITOR_SALT) -> None:
        super().__init__(key, salt=salt)
        self.at = at

    def get_timestamp(self) -> int:
        return int(self.at)


def signed(value: str = VID, *, key: str = KEY, at: float = NOW) -> str:
    return _SignerAt(key, at).sign(value).decode()


def parse(set_cookie: str) -> tuple[str, str, dict[str, str]]:
    """``(name, value, {attribute lower-cased: value})`` of a Set-Cookie value."""
    pair, *attributes = set_cookie.split("; ")
    name, _, value = pair.partition("=")
    attrs = {}
    for attribute in attributes:
        key, _, attr_value = attribute.partition("=")
        attrs[key.lower()] = attr_value
    return name, value, attrs


def cookie(visitor: Visitor, name: str) -> tuple[str, dict[str, str]] | None:
    for set_cookie in visitor.set_cookies:
        cookie_name, value, attrs = parse(set_cookie)
        if cookie_name == name:
            return value, attrs
    return None


# --------------------------------------------------------------------------------------------
# Construction


def test_a_secret_key_is_required() -> None:
    with pytest.raises(ConfigError, match=r"PIXELMIRROR_SECRET_KEY is required.*secrets\.token"):
        make(secret_key=())


def test_a_malformed_cookie_domain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PIXELMIRROR_COOKIE_DOMAIN"):
        make(cookie_domain="example.com; Secure")


def test_a_public_suffix_as_cookie_domain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"PIXELMIRROR_COOKIE_DOMAIN.*public suffix"):
        make(cookie_domain="com.pl")


# --------------------------------------------------------------------------------------------
# The visitor cookie


@pytest.mark.parametrize(
    ("token", "kept", "set_cookie"),
    [
        pytest.param(None, False, True, id="missing"),
        pytest.param(signed(), True, False, id="valid"),
        pytest.param(signed(at=NOW - 60), True, False, id="valid-a-minute-old"),
        pytest.param(signed()[:-2] + "xx", False, True, id="tampered-signature"),
        pytest.param(signed().replace(VID, "B" * 22), False, True, id="tampered-value"),
        pytest.param(signed(key=OTHER_KEY), False, True, id="unknown-key"),
        pytest.param(signed(key=OLD_KEY), True, True, id="old-key-re-signed"),
        pytest.param(signed(at=NOW - MAX_AGE - 1), False, True, id="expired"),
        pytest.param(signed(at=NOW - MAX_AGE), True, True, id="last-second-refreshed"),
        pytest.param(signed(at=NOW - MAX_AGE // 2 - 10), True, True, id="past-half-life-refreshed"),
        pytest.param(signed(at=NOW - MAX_AGE // 2 + 10), True, False, id="before-half-life-kept"),
        pytest.param(signed(at=NOW + 60), True, False, id="small-clock-skew"),
        pytest.param(signed(at=NOW + 3600), False, True, id="from-the-future"),
        pytest.param(signed("A" * 300), False, True, id="oversized"),
        pytest.param(signed("not an id!"), False, True, id="signed-but-not-an-id"),
        pytest.param(signed(VID + "x"), False, True, id="signed-id-too-long"),
        pytest.param("", False, True, id="empty"),
        pytest.param("garbage", False, True, id="garbage"),
        pytest.param("a.b.c", False, True, id="three-dots"),
        pytest.param("...", False, True, id="only-dots"),
        pytest.param("é.é.é", False, True, id="non-ascii"),
        pytest.param(VID, False, True, id="unsigned-id"),
    ],
)
def test_visitor_cookie_validity(token: str | None, kept: bool, set_cookie: bool) -> None:
    visitor = resolve(cookies={"_pm_vid": token} if token is not None else None)
    assert (visitor.visitor_id == VID) is kept
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", visitor.visitor_id)
    assert visitor.external_id == sha256_hex(visitor.visitor_id)
    issued = cookie(visitor, "_pm_vid")
    assert (issued is not None) is set_cookie
    if issued is not None:  # whatever was issued is signed by the newest key, now
        only_new_key = make(secret_key=(KEY,))
        again = resolve(only_new_key, cookies={"_pm_vid": issued[0], "_fbp": FBP})
        assert again.visitor_id == visitor.visitor_id
        assert again.set_cookies == ()


VID2 = "ZyXwVuTsRqPoNmLkJiHgFe"
GARBAGE_COOKIES = [
    pytest.param("not-a-token", id="garbage"),
    pytest.param(signed(key=OTHER_KEY), id="another-sites-key"),
    pytest.param(signed(at=NOW - MAX_AGE - 1), id="expired"),
    pytest.param("", id="empty"),
    pytest.param("x" * 300, id="oversized"),
]


@pytest.mark.parametrize("garbage", GARBAGE_COOKIES)
def test_the_first_visitor_cookie_that_verifies_wins_over_garbage_before_it(garbage: str) -> None:
    # A sibling subdomain's cookie of the same name comes first; ours follows it.
    header = f"_pm_vid={garbage}; _pm_vid={signed()}"
    visitor = resolve(headers={"cookie": header})
    assert visitor.visitor_id == VID
    assert cookie(visitor, "_pm_vid") is None  # nothing to fix: no Set-Cookie


def test_of_two_valid_visitor_cookies_the_first_wins() -> None:
    header = f"_pm_vid={signed(VID2)}; other=1; _pm_vid={signed()}"
    assert resolve(headers={"cookie": header}).visitor_id == VID2


def test_only_garbage_visitor_cookies_give_a_new_id() -> None:
    visitor = resolve(headers={"cookie": "_pm_vid=junk; _pm_vid=more-junk"})
    assert visitor.visitor_id not in ("junk", "more-junk")
    assert cookie(visitor, "_pm_vid") is not None


def test_new_visitors_get_distinct_ids() -> None:
    assert resolve().visitor_id != resolve().visitor_id


def test_cookies_from_the_wall_clock_verify() -> None:
    identity = make()
    token = TimestampSigner(KEY, salt=VISITOR_SALT).sign(VID).decode()
    visitor = identity.resolve(request(cookies={"_pm_vid": token}))
    assert visitor is not None
    assert visitor.visitor_id == VID
    assert cookie(visitor, "_pm_vid") is None


def test_the_cookie_name_is_configurable() -> None:
    identity = make(cookie_name="vid")
    visitor = resolve(identity, cookies={"vid": signed()})
    assert visitor.visitor_id == VID
    assert cookie(visitor, "vid") is None
    assert cookie(resolve(identity), "vid") is not None


@pytest.mark.parametrize(
    ("settings", "expected", "absent"),
    [
        pytest.param(
            {},
            {"path": "/", "max-age": str(MAX_AGE), "httponly": "", "samesite": "Lax", "secure": ""},
            {"domain", "expires"},
            id="defaults",
        ),
        pytest.param({"cookie_secure": False}, {"httponly": ""}, {"secure"}, id="not-secure"),
        pytest.param(
            {"cookie_domain": ".Example.com"}, {"domain": "example.com"}, set(), id="domain"
        ),
        pytest.param({"cookie_max_age": 3600}, {"max-age": "3600"}, set(), id="max-age"),
    ],
)
def test_visitor_cookie_attributes(
    settings: dict[str, Any], expected: dict[str, str], absent: set[str]
) -> None:
    issued = cookie(resolve(make(**settings)), "_pm_vid")
    assert issued is not None
    attrs = issued[1]
    assert attrs.items() >= expected.items()
    assert not absent & attrs.keys()


# --------------------------------------------------------------------------------------------
# _fbp and _fbc


@pytest.mark.parametrize(
    ("stored", "kept"),
    [
        pytest.param(None, False, id="missing"),
        pytest.param(FBP, True, id="valid"),
        pytest.param(FBP + ".AbCdEfGh", True, id="with-appendix"),
        pytest.param("fb.2.1699999990000.42", True, id="index-2"),
        pytest.param("fb.1.abc.123", False, id="bad-time"),
        pytest.param("fb.1.1699999990000", False, id="three-segments"),
        pytest.param("fb.1.1699999990000.12345678901234567890123", False, id="too-long"),
        pytest.param("garbage", False, id="garbage"),
        pytest.param("", False, id="empty"),
    ],
)
def test_fbp_is_read_or_minted(stored: str | None, kept: bool) -> None:
    visitor = resolve(cookies={"_fbp": stored} if stored is not None else None)
    issued = cookie(visitor, "_fbp")
    if kept:
        assert visitor.fbp == stored
        assert issued is None
    else:
        assert issued is not None
        assert visitor.fbp == issued[0]
        match = re.fullmatch(r"fb\.1\.([0-9]+)\.([0-9]+)", visitor.fbp)
        assert match is not None
        assert int(match[1]) == int(NOW * 1000)
        assert 0 <= int(match[2]) < 2**31


@pytest.mark.parametrize(
    ("stored", "query", "referer", "fbc", "set_cookie"),
    [
        pytest.param(None, "", None, None, False, id="no-click"),
        pytest.param(None, "fbclid=IwAR1AbC", None, "IwAR1AbC", True, id="from-query"),
        pytest.param(None, "a=1&fbclid=AbCdEf_-9&b=2", None, "AbCdEf_-9", True, id="case-kept"),
        pytest.param(
            None, "", "https://x.example/?fbclid=FromRef#frag", "FromRef", True, id="from-referer"
        ),
        pytest.param(
            None, "fbclid=FromUrl", "https://x/?fbclid=FromRef", "FromUrl", True, id="url-first"
        ),
        pytest.param(None, "fbclid=", None, None, False, id="empty-ignored"),
        pytest.param(None, "fbclid=a.b", None, None, False, id="dotted-ignored"),
        pytest.param(None, "fbclid=" + "a" * 501, None, None, False, id="too-long-ignored"),
        pytest.param(None, "fbclid=" + "a" * 500, None, "a" * 500, True, id="500-accepted"),
        pytest.param(None, "fbclid=a%3Bb", None, None, False, id="cookie-unsafe-ignored"),
        pytest.param(FBC, "", None, FBC, False, id="stored-kept"),
        pytest.param(FBC, "fbclid=IwAR1AbC", None, FBC, False, id="same-click-not-re-set"),
        pytest.param(
            FBC + ".AbCdEfGh", "fbclid=IwAR1AbC", None, FBC + ".AbCdEfGh", False, id="appendix"
        ),
        pytest.param(
            FBC + ".AbCdEfGh", "fbclid=AbCdEfGh", None, "AbCdEfGh", True, id="segment-3-not-last"
        ),
        pytest.param(FBC, "fbclid=IwAR2New", None, "IwAR2New", True, id="changed-click-re-set"),
        pytest.param(FBC, "fbclid=iwar1abc", None, "iwar1abc", True, id="case-differs-re-set"),
        pytest.param("fb.1.x.y", "", None, None, False, id="malformed-dropped"),
    ],
)
def test_fbc(
    stored: str | None, query: str, referer: str | None, fbc: str | None, set_cookie: bool
) -> None:
    visitor = resolve(
        cookies={"_fbp": FBP, **({"_fbc": stored} if stored is not None else {})},
        query=query,
        headers={"referer": referer} if referer else None,
    )
    issued = cookie(visitor, "_fbc")
    assert (issued is not None) is set_cookie
    if set_cookie:
        assert issued is not None
        assert visitor.fbc == issued[0] == f"fb.1.{int(NOW * 1000)}.{fbc}"
    else:
        assert visitor.fbc == fbc
    assert cookie(visitor, "_fbp") is None


@pytest.mark.parametrize(
    ("scheme", "secure"), [pytest.param("https", True, id="https"), pytest.param("http", False)]
)
def test_fb_cookie_attributes(scheme: str, secure: bool) -> None:
    visitor = resolve(scheme=scheme, query="fbclid=Click")
    for name in ("_fbp", "_fbc"):
        issued = cookie(visitor, name)
        assert issued is not None
        attrs = issued[1]
        assert attrs["max-age"] == str(FB_MAX_AGE) == "7776000"
        assert attrs["path"] == "/"
        assert attrs["domain"] == "example.com"
        assert attrs["samesite"] == "Lax"
        assert "httponly" not in attrs  # the pixel rewrites them from JavaScript
        assert ("secure" in attrs) is secure


def test_fb_cookies_off_reads_but_never_sets() -> None:
    identity = make(fb_cookies=False)
    visitor = resolve(identity)
    assert (visitor.fbp, visitor.fbc) == (None, None)
    assert [parse(c)[0] for c in visitor.set_cookies] == ["_pm_vid"]

    visitor = resolve(identity, cookies={"_fbp": FBP, "_fbc": FBC, "_pm_vid": signed()})
    assert (visitor.fbp, visitor.fbc, visitor.set_cookies) == (FBP, FBC, ())

    # A click still gives the server event an fbc, unstored, so with subdomain index 1.
    visitor = resolve(identity, cookies={"_pm_vid": signed()}, query="fbclid=Click")
    assert visitor.fbc == f"fb.1.{int(NOW * 1000)}.Click"
    assert visitor.set_cookies == ()


# (host, Domain of _fbp/_fbc or None for host-only, subdomainIndex): the registrable domain by
# the Public Suffix List, ICANN and private sections alike, as browsers apply it.
FB_SITES = [
    ("example.com", "example.com", 1),
    ("www.example.com", "example.com", 1),
    ("a.b.c.example.com", "example.com", 1),
    ("WWW.Example.COM.:443", "example.com", 1),
    ("example.co.uk", "example.co.uk", 2),
    ("shop.example.co.uk", "example.co.uk", 2),
    ("a.b.example.com.au", "example.com.au", 2),
    # country second levels a short hand-kept list misses
    ("shop.example.com.pl", "example.com.pl", 2),
    ("www.example.org.il", "example.org.il", 2),
    ("shop.example.tokyo.jp", "example.tokyo.jp", 2),
    ("shop.example.com.es", "example.com.es", 2),
    ("www.example.com.br", "example.com.br", 2),
    ("www.example.gov.uk", "example.gov.uk", 2),
    ("x.city.kobe.jp", "city.kobe.jp", 2),  # an exception to the *.kobe.jp wildcard
    ("www.shop.foo.kobe.jp", "shop.foo.kobe.jp", 3),  # under the wildcard itself
    # private section: hosting platforms whose every label is another owner
    ("bucket.s3.amazonaws.com", "bucket.s3.amazonaws.com", 3),
    ("me.github.io", "me.github.io", 2),
    ("www.me.github.io", "me.github.io", 2),
    ("app.herokuapp.com", "app.herokuapp.com", 2),
    ("shop.vercel.app", "shop.vercel.app", 2),
    ("a.b.appspot.com", "b.appspot.com", 2),
    # IDN in punycode
    ("shop.example.xn--p1ai", "example.xn--p1ai", 1),
    ("www.shop.xn--ciqpn.hk", "shop.xn--ciqpn.hk", 2),
    ("SHOP.XN--P1AI.", "shop.xn--p1ai", 1),
    # a host that is a public suffix itself may only have a host-only cookie
    ("co.uk", None, 1),
    ("com.pl", None, 1),
    ("github.io", None, 1),
    ("s3.amazonaws.com", None, 2),
    ("xn--ciqpn.hk", None, 1),
    # no domain at all
    ("localhost", None, 0),
    ("localhost:8000", None, 0),
    ("app.localhost", None, 0),
    ("127.0.0.1", None, 0),
    ("127.0.0.1:5000", None, 0),
    ("[::1]", None, 0),
    ("[::1]:8000", None, 0),
    ("[2001:db8::1]:443", None, 0),
    ("intranet", None, 0),
    ("evil.com;domain=x", None, 0),
    ("", None, 0),
]


@pytest.mark.parametrize(
    ("host", "domain", "index", "settings"),
    [
        *(
            pytest.param(host, domain, index, {}, id=host or "empty")
            for host, domain, index in FB_SITES
        ),
        pytest.param(
            "a.shop.example.com",
            "shop.example.com",
            2,
            {"cookie_domain": "shop.example.com"},
            id="cookie-domain",
        ),
        pytest.param(
            "www.other.org", "other.org", 1, {"cookie_domain": "example.com"}, id="outside-domain"
        ),
    ],
)
def test_fb_cookie_domain_and_subdomain_index(
    host: str, domain: str | None, index: int, settings: dict[str, Any]
) -> None:
    visitor = resolve(make(**settings), host=host)
    issued = cookie(visitor, "_fbp")
    assert issued is not None
    assert issued[1].get("domain") == domain
    assert visitor.fbp is not None
    assert visitor.fbp.startswith(f"fb.{index}.")


def test_the_public_suffix_list_loads_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Public Suffix List must come from the installed package")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    _domains._suffixes.cache_clear()
    _domains.registrable_domain.cache_clear()
    try:
        assert _domains.registrable_domain("shop.example.com.pl") == "example.com.pl"
        assert _domains.is_public_suffix("s3.amazonaws.com")
    finally:
        _domains.registrable_domain.cache_clear()


def test_fb_cookies_follow_the_forwarded_host_behind_a_trusted_proxy() -> None:
    identity = make(trusted_proxies=("10.0.0.0/8",))
    headers = {"x-forwarded-host": "shop.example.co.uk", "x-forwarded-proto": "https"}
    visitor = resolve(identity, scheme="http", host="app:8000", peer="10.0.0.1", headers=headers)
    issued = cookie(visitor, "_fbp")
    assert issued is not None
    assert issued[1]["domain"] == "example.co.uk"
    assert "secure" in issued[1]


# --------------------------------------------------------------------------------------------
# Client IP and page URL

TRUSTED = ("10.0.0.0/8", "2001:db8:ffff::/48")


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        pytest.param("203.0.113.9", {}, "203.0.113.9", id="peer"),
        pytest.param(
            "203.0.113.9", {"x-forwarded-for": "198.51.100.7"}, "203.0.113.9", id="untrusted-xff"
        ),
        pytest.param(
            "203.0.113.9", {"forwarded": "for=198.51.100.7"}, "203.0.113.9", id="untrusted-fwd"
        ),
        pytest.param("10.0.0.1", {}, "10.0.0.1", id="trusted-without-header"),
        pytest.param("10.0.0.1", {"x-forwarded-for": "198.51.100.7"}, "198.51.100.7", id="one"),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "198.51.100.7, 10.0.0.2"}, "198.51.100.7", id="chain"
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "1.1.1.1, 198.51.100.7, 10.0.0.2"},
            "198.51.100.7",
            id="forged-left-ignored",
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "10.0.0.3,10.0.0.2"}, "10.0.0.3", id="all-trusted"
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "198.51.100.7, garbage"},
            "10.0.0.1",
            id="garbage-right-stops",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "garbage, 198.51.100.7"},
            "198.51.100.7",
            id="garbage-left-unreached",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "198.51.100.7, unknown, 10.0.0.2"},
            "10.0.0.2",
            id="unknown-stops",
        ),
        pytest.param("10.0.0.1", {"x-forwarded-for": ""}, "10.0.0.1", id="empty-xff"),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "198.51.100.7:5678"}, "198.51.100.7", id="ipv4-port"
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "[2001:db8::1]:443"}, "2001:db8::1", id="ipv6-port"
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "2001:DB8:0:0::1"}, "2001:db8::1", id="ipv6-canonical"
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "::ffff:198.51.100.7"}, "198.51.100.7", id="v4-mapped"
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": "for=192.0.2.60;proto=http;by=203.0.113.43"},
            "192.0.2.60",
            id="forwarded",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": 'for="[2001:db8:cafe::17]:4711"'},
            "2001:db8:cafe::17",
            id="forwarded-ipv6-quoted",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": "for=198.51.100.7, for=10.0.0.2;proto=https"},
            "198.51.100.7",
            id="forwarded-chain",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": "For=198.51.100.7, for=_hidden"},
            "10.0.0.1",
            id="forwarded-obfuscated-stops",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": "proto=https, by=10.0.0.9"},
            "10.0.0.1",
            id="forwarded-without-for",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "198.51.100.7", "forwarded": "for=192.0.2.60"},
            "198.51.100.7",
            id="xff-wins-over-forwarded",
        ),
        pytest.param(
            "2001:db8:ffff::1",
            {"x-forwarded-for": "2001:db8::42"},
            "2001:db8::42",
            id="ipv6-trusted-peer",
        ),
        pytest.param(
            "::ffff:10.0.0.1", {"x-forwarded-for": "198.51.100.7"}, "198.51.100.7", id="mapped-peer"
        ),
        pytest.param(
            "10.0.0.1:40000", {"x-forwarded-for": "198.51.100.7"}, "198.51.100.7", id="peer-port"
        ),
        pytest.param("fe80::1%eth0", {}, "fe80::1", id="peer-zone-dropped"),
        pytest.param(None, {"x-forwarded-for": "198.51.100.7"}, None, id="no-peer"),
        pytest.param("garbage", {"x-forwarded-for": "198.51.100.7"}, None, id="garbage-peer"),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": ", ".join(["10.0.0.2"] * 5000)},
            "10.0.0.2",
            id="huge-all-trusted",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "[" * 300 + ", " + "1" * 300},
            "10.0.0.1",
            id="junk",
        ),
    ],
)
def test_client_ip(peer: str | None, headers: dict[str, str], expected: str | None) -> None:
    identity = make(trusted_proxies=TRUSTED)
    facts = request(peer=peer, headers=headers)
    assert identity.client_ip(facts) == expected
    assert resolve(identity, peer=peer, headers=headers).client_ip == expected


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        pytest.param("10.0.0.1", {}, "http://app:8000/shop?q=1", id="trusted-no-headers"),
        pytest.param(
            "203.0.113.9",
            {"x-forwarded-proto": "https", "x-forwarded-host": "shop.example.com"},
            "http://app:8000/shop?q=1",
            id="untrusted-ignored",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-proto": "https", "x-forwarded-host": "shop.example.com"},
            "https://shop.example.com/shop?q=1",
            id="x-forwarded",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-proto": "HTTPS"},
            "https://app:8000/shop?q=1",
            id="proto-only",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-proto": "http, https", "x-forwarded-host": "a.example, b.example"},
            "https://b.example/shop?q=1",
            id="rightmost-wins",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": 'for=198.51.100.7;proto=https;host="shop.example.com:8443"'},
            "https://shop.example.com:8443/shop?q=1",
            id="forwarded",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-proto": "ftp", "x-forwarded-host": "evil/host?x"},
            "http://app:8000/shop?q=1",
            id="garbage-ignored",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-host": "[2001:db8::1]:8443"},
            "http://[2001:db8::1]:8443/shop?q=1",
            id="ipv6-host",
        ),
    ],
)
def test_page_url(peer: str, headers: dict[str, str], expected: str) -> None:
    identity = make(trusted_proxies=TRUSTED)
    facts = request(peer=peer, headers=headers, scheme="http", host="app:8000", query="q=1")
    assert identity.page_url(facts) == expected


# --------------------------------------------------------------------------------------------
# Consent


def _refuse(facts: RequestFacts) -> bool:
    return False


def _grant(facts: RequestFacts) -> bool:
    return True


def _fail(facts: RequestFacts) -> bool:
    raise RuntimeError("consent service down")


@pytest.mark.parametrize(
    ("setting", "callback", "consent_cookie", "granted"),
    [
        pytest.param(None, None, None, True, id="no-gating"),
        pytest.param(None, _grant, None, True, id="callable-true"),
        pytest.param(None, _refuse, None, False, id="callable-false"),
        pytest.param("consent", _grant, None, True, id="callable-overrides-cookie"),
        pytest.param("consent", _refuse, "yes", False, id="callable-overrides-cookie-yes"),
        pytest.param("consent", None, None, False, id="name-missing"),
        pytest.param("consent", None, "1", True, id="name-1"),
        pytest.param("consent", None, "yes", True, id="name-yes"),
        pytest.param("consent", None, "analytics", True, id="name-any-value"),
        pytest.param("consent", None, "", False, id="name-empty"),
        pytest.param("consent", None, "0", False, id="name-0"),
        pytest.param("consent", None, "false", False, id="name-false"),
        pytest.param("consent", None, "No", False, id="name-No"),
        pytest.param("consent", None, "deny", False, id="name-deny"),
        pytest.param("consent", None, "DENIED", False, id="name-DENIED"),
        pytest.param("consent=marketing", None, "marketing", True, id="value-exact"),
        pytest.param("consent=marketing", None, "analytics,marketing", True, id="value-in-list"),
        pytest.param("consent=marketing", None, "analytics", False, id="value-other"),
        pytest.param("consent=marketing", None, "Marketing", False, id="value-case"),
        pytest.param("consent=marketing", None, "marketing-off", False, id="value-prefix"),
        pytest.param("consent=marketing", None, None, False, id="value-missing"),
    ],
)
def test_consent(
    setting: str | None,
    callback: Callable[[RequestFacts], bool] | None,
    consent_cookie: str | None,
    granted: bool,
) -> None:
    identity = make(consent=callback, consent_cookie=setting)
    cookies = {"consent": consent_cookie} if consent_cookie is not None else None
    visitor = identity.resolve(request(cookies=cookies), now=NOW)
    assert (visitor is not None) is granted


def test_a_failing_consent_callable_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    identity = make(consent=_fail)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        assert identity.resolve(request(), now=NOW) is None
    assert "consent callable failed" in caplog.text


# --------------------------------------------------------------------------------------------
# Bots

WEBKIT = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko"
BOTS = {
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)"
    ),
    "adsbot": "AdsBot-Google (+http://www.google.com/adsbot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "yandex": "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "yandex-images": "Mozilla/5.0 (compatible; YandexImages/3.0; +http://yandex.com/bots)",
    "baidu": "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "duckduckbot": "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "slurp": "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
    "applebot": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)"
    ),
    "ahrefs": "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "semrush": "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "mj12": "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
    "petalbot": "Mozilla/5.0 (compatible;PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
    "bytespider": (
        "Mozilla/5.0 (Linux; Android 5.0) (compatible; Bytespider; spider-feedback@bytedance.com)"
    ),
    "gptbot": f"{WEBKIT}; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "chatgpt-user": f"{WEBKIT}); compatible; ChatGPT-User/1.0; +https://openai.com/bot",
    "ccbot": "CCBot/2.0 (https://commoncrawl.org/faq/)",
    "claudebot": f"{WEBKIT}; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)",
    "perplexitybot": f"{WEBKIT}; compatible; PerplexityBot/1.0; +https://perplexity.ai/bot)",
    "amazonbot": f"{WEBKIT}; compatible; Amazonbot/0.1; +https://developer.amazon.com/amazonbot)",
    "facebookexternalhit": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "facebookcatalog": "facebookcatalog/1.0",
    "meta-externalagent": "meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
    "meta-externalfetcher": "meta-externalfetcher/1.1",
    "twitterbot": "Twitterbot/1.0",
    "generic-crawler": "SomeCrawler/1.0",
    "curl": "curl/8.5.0",
    "wget": "Wget/1.21.4",
    "python-requests": "python-requests/2.31.0",
    "httpx": "python-httpx/0.27.0",
    "go": "Go-http-client/2.0",
    # link-preview fetchers: no JavaScript either
    "whatsapp": "WhatsApp/2.23.20.0 A",
    "whatsapp-ios": "WhatsApp/2.24.8.85 i",
    "slackbot-link-expanding": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "slack-imgproxy": "Slack-ImgProxy (+https://api.slack.com/robots)",
    "skype-preview": "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "telegram": "TelegramBot (like TwitterBot)",
    "discord": "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "googleother": "GoogleOther",
    "googleother-mobile": (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36 (compatible; GoogleOther)"
    ),
    "google-site-verification": "Mozilla/5.0 (compatible; Google-Site-Verification/1.0)",
    "google-inspectiontool": ("Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)"),
    "meta-externalads": (
        "meta-externalads/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)"
    ),
    "perplexity-user": (
        f"{WEBKIT}; compatible; Perplexity-User/1.0; +https://perplexity.ai/perplexity-user)"
    ),
    # HTTP libraries, wherever they are named
    "aiohttp-after-python": "Python/3.11 aiohttp/3.9.5",
    "go-in-compatible": "Mozilla/5.0 (compatible; Go-http-client/1.1)",
    "apache-httpclient": "Apache-HttpClient/4.5.14 (Java/17.0.9)",
    "okhttp": "okhttp/4.12.0",
    "requests-at-the-end": "Mozilla/5.0 (X11; Linux x86_64) python-requests/2.31.0",
    "node-fetch": "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "dalvik": "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP1A.240405.002)",
    "empty": "",
    "blank": "   ",
}

ANDROID_WV = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36"
)
IOS_APP = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
# Real browsers and in-app browsers: they run the pixel, so none may ever count as a crawler.
BROWSERS = {
    "chrome": CHROME,
    "chrome-mac": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36"
    ),
    "chrome-android": (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36"
    ),
    "chrome-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1"
    ),
    "safari": SAFARI,
    "ios-safari": IOS_SAFARI,
    "ipad-safari": (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1"
    ),
    "firefox": FIREFOX,
    "firefox-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
    ),
    "firefox-android": "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
    "firefox-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) FxiOS/133.0 Mobile/15E148 Safari/605.1.15"
    ),
    "edge": CHROME + " Edg/124.0.2478.51",
    "edge-android": (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36 EdgA/131.0.0.0"
    ),
    "edge-ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.0 EdgiOS/131.2903.68 Mobile/15E148 Safari/605.1.15"
    ),
    "opera": CHROME + " OPR/115.0.0.0",
    "ie11": "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "ie10": "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1; Trident/6.0)",
    "samsung": (
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
    ),
    "google-app": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) GSA/343.0.695551749 Mobile/15E148 Safari/604.1"
    ),
    # Meta's own in-app browsers
    "facebook-in-app": f"{IOS_APP} [FBAN/FBIOS;FBAV/458.0.0.38.108;FBBV/577146420]",
    "facebook-in-app-full": (
        f"{IOS_APP} [FBAN/FBIOS;FBAV/490.0.0.40.107;FBBV/660839245;FBDV/iPhone15,3;FBMD/iPhone;"
        "FBSN/iOS;FBSV/17.4;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/662370178]"
    ),
    "facebook-android": f"{ANDROID_WV} [FB_IAB/FB4A;FBAV/462.0.0.41.83;]",
    "metaiab-facebook": f"{ANDROID_WV} MetaIAB Facebook",
    "messenger-android": f"{ANDROID_WV} [FB_IAB/Orca-Android;FBAV/451.0.0.48.109;]",
    "messenger-ios": f"{IOS_APP} [FBAN/MessengerLiteForiOS;FBAV/451.0.0.29.108;FBBV/596003217]",
    "instagram-in-app": (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36 Instagram 329.0.0.41.93 Android"
    ),
    "instagram-ios": (
        f"{IOS_APP} Instagram 329.0.3.29.108 (iPhone14,2; iOS 17_4; en_US; en; scale=3.00; "
        "1170x2532; 597349282)"
    ),
    "instagram-android-full": (
        f"{ANDROID_WV} Instagram 406.0.0.58.159 Android (35/15; 450dpi; 1080x2400; OnePlus; "
        "CPH2557; OP5D0DL1; qcom; en_US; 824871342)"
    ),
    "threads": f"{ANDROID_WV} Barcelona 330.0.0.26.88 Android (34/14; 450dpi; 1080x2340)",
    "meta-quest": (
        "Mozilla/5.0 (X11; Linux x86_64; Quest 3) AppleWebKit/537.36 (KHTML, like Gecko) "
        "OculusBrowser/33.0.0.0 SamsungBrowser/4.0 Chrome/126.0.6478.122 VR Safari/537.36"
    ),
    "whatsapp-in-app": f"{ANDROID_WV} WhatsApp/2.24.8.85",
    # other apps' in-app browsers
    "tiktok": (
        f"{ANDROID_WV} trill_310703 JsSdk/1.0 NetType/WIFI Channel/googleplay "
        "AppName/musical_ly app_version/31.7.3 ByteLocale/en ByteFullLocale/en Region/US "
        "AppId/1233 Spark/1.4.6.3-bugfix AppVersion/31.7.3 BytedanceWebview/d8a21c6"
    ),
    "tiktok-ios": (
        f"{IOS_APP} musical_ly_34.5.0 JsSdk/2.0 NetType/WIFI Channel/App Store "
        "ByteLocale/en Region/US isDarkMode/0 WKWebView/1 RevealType/Dialog "
        "BytedanceWebview/d8a21c6"
    ),
    "wechat-ios": f"{IOS_APP} MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN",
    "wechat-android": (
        f"{ANDROID_WV} XWEB/1160065 MMWEBSDK/20240301 MMWEBID/6533 "
        "MicroMessenger/8.0.48.2580(0x28003035) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN "
        "ABI/arm64"
    ),
    "snapchat": f"{IOS_APP} Snapchat/13.10.0.41 (like Safari/8617.1.17.10.9, panda)",
    "pinterest": f"{ANDROID_WV} [Pinterest/Android]",
    "linkedin": f"{IOS_APP} [LinkedInApp]/9.30.1466",
    "line": f"{IOS_APP} Safari Line/14.5.0",
    "twitter": f"{ANDROID_WV} TwitterAndroid",
    "cubot-phone": (
        "Mozilla/5.0 (Linux; Android 9; CUBOT P30) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36"
    ),
    "headless-chrome": HEADLESS,  # not a bot: it runs the pixel, and so do our browser tests
}


@pytest.mark.parametrize("ua", [pytest.param(ua, id=name) for name, ua in BOTS.items()])
def test_bots_get_nothing(ua: str) -> None:
    assert make().resolve(request(ua=ua), now=NOW) is None
    assert make(bot_filter=False).resolve(request(ua=ua), now=NOW) is not None


@pytest.mark.parametrize("ua", [pytest.param(ua, id=name) for name, ua in BROWSERS.items()])
def test_browsers_are_visitors(ua: str) -> None:
    visitor = make().resolve(request(ua=ua), now=NOW)
    assert visitor is not None
    assert visitor.user_agent == ua


def test_a_missing_user_agent_is_a_bot() -> None:
    assert make().resolve(request(ua=None), now=NOW) is None
    visitor = make(bot_filter=False).resolve(request(ua=None), now=NOW)
    assert visitor is not None
    assert visitor.user_agent is None


# --------------------------------------------------------------------------------------------
# Carried browser events

EVENTS: list[dict[str, object]] = [
    {"name": "AddToCart", "event_id": "e-1", "custom_data": {"value": 10, "currency": "USD"}},
    {"name": "Purchase", "event_id": "e-2", "custom_data": {"value": 49.99, "currency": "USD"}},
]


def carried(identity: Identity, set_cookie: str, *, now: float = NOW) -> list[dict[str, object]]:
    name, value, _ = parse(set_cookie)
    return identity.read_carried(request(cookies={name: value}), now=now)


def test_carry_round_trip() -> None:
    identity = make()
    set_cookie = identity.carry_cookie(EVENTS, now=NOW)
    assert carried(identity, set_cookie) == EVENTS
    assert carried(identity, set_cookie, now=NOW + 600) == EVENTS


@pytest.mark.parametrize(
    ("settings", "expected", "absent"),
    [
        pytest.param(
            {},
            {"max-age": "600", "path": "/", "httponly": "", "samesite": "Lax", "secure": ""},
            {"domain"},
            id="defaults",
        ),
        pytest.param({"cookie_secure": False}, {"httponly": ""}, {"secure"}, id="not-secure"),
        pytest.param({"cookie_domain": "example.com"}, {"domain": "example.com"}, set(), id="dom"),
    ],
)
def test_carry_cookie_attributes(
    settings: dict[str, Any], expected: dict[str, str], absent: set[str]
) -> None:
    identity = make(**settings)
    name, _, attrs = parse(identity.carry_cookie(EVENTS, now=NOW))
    assert name == "_pm_vid_ev"
    assert attrs.items() >= expected.items()
    assert not absent & attrs.keys()
    name, value, attrs = parse(identity.clear_carry_cookie())
    assert (name, value, attrs["max-age"]) == ("_pm_vid_ev", "", "0")
    assert attrs.items() >= {k: v for k, v in expected.items() if k != "max-age"}.items()


def _flip(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("tweak", "now"),
    [
        pytest.param(_flip, NOW, id="tampered"),
        pytest.param(lambda t: t.replace(".", "", 1), NOW, id="mangled"),
        pytest.param(lambda t: t, NOW + 601, id="expired"),
        pytest.param(lambda t: t, NOW - 3600, id="from-the-future"),
        pytest.param(lambda t: "garbage", NOW, id="garbage"),
        pytest.param(lambda t: "", NOW, id="empty"),
        pytest.param(lambda t: t + "x" * 5000, NOW, id="oversized"),
    ],
)
def test_read_carried_rejects(tweak: Callable[[str], str], now: float) -> None:
    identity = make()
    name, value, _ = parse(identity.carry_cookie(EVENTS, now=NOW))
    facts = request(cookies={name: tweak(value)})
    assert identity.read_carried(facts, now=now) == []


def test_read_carried_without_cookie() -> None:
    assert make().read_carried(request()) == []


def test_carried_events_survive_key_rotation() -> None:
    set_cookie = make(secret_key=(OLD_KEY,)).carry_cookie(EVENTS, now=NOW)
    assert carried(make(secret_key=(KEY, OLD_KEY)), set_cookie) == EVENTS
    assert carried(make(secret_key=(OTHER_KEY,)), set_cookie) == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"name": "Purchase", "event_id": "e"}, id="not-a-list"),
        pytest.param([{"name": "Purchase"}], id="no-event-id"),
        pytest.param([{"name": 1, "event_id": "e"}], id="name-not-text"),
        pytest.param([{"name": "P", "event_id": "e", "custom_data": [1]}], id="custom-data-list"),
        pytest.param(["Purchase"], id="not-a-dict"),
    ],
)
def test_read_carried_rejects_signed_nonsense(payload: object) -> None:
    # Made with the library's own serializer and the wall clock: the format is itsdangerous'.
    token = URLSafeTimedSerializer(KEY, salt=CARRY_SALT).dumps(payload)
    assert make().read_carried(request(cookies={"_pm_vid_ev": token})) == []


def test_carry_of_the_libraries_own_format() -> None:
    token = URLSafeTimedSerializer(KEY, salt=CARRY_SALT).dumps(EVENTS)
    assert make().read_carried(request(cookies={"_pm_vid_ev": token})) == EVENTS


def test_carry_nothing_deletes_the_cookie() -> None:
    identity = make()
    assert identity.carry_cookie([], now=NOW) == identity.clear_carry_cookie()


def test_carry_stringifies_what_json_cannot_carry() -> None:
    identity = make()
    events = [{"name": "Purchase", "event_id": "e", "custom_data": {"value": Decimal("9.90")}}]
    assert carried(identity, identity.carry_cookie(events, now=NOW)) == [
        {"name": "Purchase", "event_id": "e", "custom_data": {"value": "9.90"}}
    ]


def test_carry_drops_oldest_custom_data_first(caplog: pytest.LogCaptureFixture) -> None:
    identity = make()
    # Random hex does not compress: 8 events of ~700 bytes are well over the limit.
    events = [
        {"name": "AddToCart", "event_id": f"e-{n}", "custom_data": {"blob": secrets.token_hex(350)}}
        for n in range(8)
    ]
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        set_cookie = identity.carry_cookie(events, now=NOW)
    assert len(set_cookie.encode()) <= CARRY_MAX_BYTES
    assert "custom_data dropped" in caplog.text
    result = carried(identity, set_cookie)
    assert [event["event_id"] for event in result] == [f"e-{n}" for n in range(8)]
    kept = ["custom_data" in event for event in result]
    assert kept[-1]
    assert not kept[0]
    assert kept == sorted(kept)  # stripped from the oldest onwards
    assert result[-1] == events[-1]


def test_carry_drops_oldest_events_last(caplog: pytest.LogCaptureFixture) -> None:
    identity = make()
    events = [
        {"name": "Lead", "event_id": f"{n}-{secrets.token_hex(300)}", "custom_data": {"v": n}}
        for n in range(10)
    ]
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        set_cookie = identity.carry_cookie(events, now=NOW)
    assert len(set_cookie.encode()) <= CARRY_MAX_BYTES
    result = carried(identity, set_cookie)
    assert 0 < len(result) < 10
    assert [event["event_id"] for event in result] == [
        event["event_id"] for event in events[-len(result) :]
    ]
    assert all("custom_data" not in event for event in result)
    assert "event(s) dropped" in caplog.text


def test_carry_of_one_huge_event_gives_the_deleting_cookie() -> None:
    identity = make()
    events = [{"name": "Lead", "event_id": secrets.token_hex(4000)}]
    assert identity.carry_cookie(events, now=NOW) == identity.clear_carry_cookie()


def test_carry_does_not_change_the_callers_events() -> None:
    events = [{"name": "Lead", "event_id": "e", "custom_data": {"blob": secrets.token_hex(3000)}}]
    make().carry_cookie(events, now=NOW)
    assert "custom_data" in events[0]


# --------------------------------------------------------------------------------------------
# Robustness: request input never raises


@pytest.mark.parametrize(
    "facts",
    [
        pytest.param(
            RequestFacts(
                "GET",
                "https",
                "\x00\xff",
                "/",
                "",
                {"user-agent": "\x00", "cookie": "\x00=\xff;;=;"},
                "",
            ),
            id="control-characters",
        ),
        pytest.param(
            RequestFacts(
                "GET",
                "https",
                "[::1",
                "/",
                "fbclid=%ZZ%&fbclid",
                {
                    "user-agent": CHROME,
                    "cookie": "_pm_vid=\udcff.a.b; _fbp=fb.1.2.3.4.5.6; _fbc=fb..",
                    "referer": "?fbclid=" + "é" * 10,
                },
                "[::1",
            ),
            id="broken-everything",
        ),
        pytest.param(
            RequestFacts(
                "GET",
                "https",
                "x" * 10_000,
                "/",
                "fbclid=" + "A" * 100_000,
                {
                    "user-agent": "Mozilla/5.0 " + "a" * 100_000,
                    "cookie": "_pm_vid=" + "A." * 50_000,
                    "x-forwarded-for": "1," * 50_000,
                    "forwarded": "for=;" * 10_000,
                },
                "10.0.0.1",
            ),
            id="huge",
        ),
        pytest.param(
            RequestFacts(
                "GET",
                "https",
                "example.com",
                "/",
                "",
                {
                    "user-agent": CHROME,
                    "cookie": "_pm_vid=" + signed(at=2**40) + "; _pm_vid_ev=.%%%.a.b",
                    "x-forwarded-proto": "\x00",
                    "x-forwarded-host": "",
                },
                "10.0.0.1",
            ),
            id="absurd-timestamp",
        ),
    ],
)
def test_garbage_requests_never_raise(facts: RequestFacts) -> None:
    # The filter's verdict on a garbage User-Agent is not the point: let every request through.
    is_crawler(facts.headers.get("user-agent"))
    identity = make(trusted_proxies=TRUSTED, bot_filter=False)
    visitor = identity.resolve(facts, now=NOW)
    assert visitor is not None
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", visitor.visitor_id)
    identity.client_ip(facts)
    identity.page_url(facts)
    assert identity.read_carried(facts) == []
    for set_cookie in visitor.set_cookies:  # nothing from the request leaks into attributes
        assert set_cookie.isascii()
        assert all(c not in set_cookie for c in "\r\n\x00,")


# --------------------------------------------------------------------------------------------
# Secure cookies over plain http


def _secure_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "PIXELMIRROR_COOKIE_SECURE" in r.getMessage()]


def test_a_secure_cookie_over_plain_http_warns_once_naming_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    identity = make()
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        for _ in range(50):  # no cookie comes back: each request mints a new id
            visitor = resolve(identity, scheme="http", host="shop.example.com")
            assert cookie(visitor, "_pm_vid") is not None
    warnings = _secure_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "shop.example.com" in warnings[0].getMessage()


def test_each_identity_warns_about_secure_over_http_on_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        for identity in (make(), make()):
            resolve(identity, scheme="http")
            resolve(identity, scheme="http")
    assert len(_secure_warnings(caplog)) == 2


@pytest.mark.parametrize(
    ("scheme", "host", "settings", "headers"),
    [
        pytest.param("https", "shop.example.com", {}, {}, id="https"),
        pytest.param("http", "localhost:8000", {}, {}, id="localhost"),
        pytest.param("http", "app.localhost", {}, {}, id="sub.localhost"),
        pytest.param("http", "127.0.0.1:5000", {}, {}, id="127.0.0.1"),
        pytest.param("http", "[::1]:8000", {}, {}, id="ipv6-loopback"),
        pytest.param("http", "shop.example.com", {"cookie_secure": False}, {}, id="secure-off"),
        pytest.param(
            "http",
            "app:8000",
            {"trusted_proxies": ("10.0.0.0/8",)},
            {"x-forwarded-proto": "https", "x-forwarded-host": "shop.example.com"},
            id="https-at-the-proxy",
        ),
    ],
)
def test_no_secure_cookie_warning_where_browsers_keep_it(
    caplog: pytest.LogCaptureFixture,
    scheme: str,
    host: str,
    settings: dict[str, Any],
    headers: dict[str, str],
) -> None:
    identity = make(**settings)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        for _ in range(3):
            resolve(identity, scheme=scheme, host=host, headers=headers, peer="10.0.0.1")
    assert _secure_warnings(caplog) == []


# --------------------------------------------------------------------------------------------
# The crawler filter against a maintained public list of crawler user agents (tests/data)

# Entries of the list (by their pattern) that are browsers a person uses: they run the pixel.
LISTED_BROWSERS = {
    "HeadlessChrome": "Chrome without a window: it runs the pixel, and our browser tests use it",
    "MetaIAB Facebook": "Meta's own in-app browser",
    "AP3A\\.240617\\.008": "an Android build whose Instagram in-app browser bots also copy",
    "Code\\/1\\.": "Visual Studio Code's built-in browser (Electron)",
    "Trae\\/": "the Trae editor's built-in browser (Electron)",
    "Fluid": "Fluid, a macOS site-specific browser",
}


def _listed_crawlers() -> list[Any]:
    path = Path(__file__).parent / "data" / "crawler-user-agents.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    return [
        pytest.param(ua, id=f"{entry['pattern'][:40]}#{n}")
        for entry in entries
        if entry["pattern"] not in LISTED_BROWSERS
        for n, ua in enumerate(entry.get("instances", []))
    ]


def test_the_public_crawler_list_is_read_whole() -> None:
    # A format change upstream must fail loudly, not quietly test nothing.
    assert len(_listed_crawlers()) > 2000


@pytest.mark.parametrize("ua", _listed_crawlers())
def test_every_listed_crawler_is_flagged(ua: str) -> None:
    assert is_crawler(ua)


def test_the_listed_exceptions_are_in_the_list_and_look_like_browsers() -> None:
    path = Path(__file__).parent / "data" / "crawler-user-agents.json"
    listed = {entry["pattern"]: entry["instances"] for entry in json.loads(path.read_text())}
    for pattern in LISTED_BROWSERS:
        assert listed[pattern], pattern
        assert not any(is_crawler(ua) for ua in listed[pattern]), pattern


@pytest.mark.parametrize("ua", [pytest.param(ua, id=name) for name, ua in BROWSERS.items()])
def test_no_browser_is_a_crawler(ua: str) -> None:
    assert not is_crawler(ua)


@pytest.mark.parametrize("ua", [WEBKIT, CHROME, HEADLESS, FIREFOX, *BOTS.values()])
def test_the_crawler_verdict_ignores_case(ua: str) -> None:
    assert is_crawler(ua.upper()) is is_crawler(ua.lower()) is is_crawler(ua)


def test_user_agents_too_long_to_cache_get_the_same_verdict() -> None:
    padding = " " + "a" * 1000
    assert not is_crawler(CHROME + padding)
    assert is_crawler(CHROME + " AhrefsBot/7.0" + padding)
    assert is_crawler("x" * 5000)


# --------------------------------------------------------------------------------------------
# A site's own crawler rules


def _monitor_is_bot(facts: RequestFacts) -> bool:
    return "AcmeMonitor" in facts.headers.get("user-agent", "")


def test_is_bot_replaces_the_built_in_check() -> None:
    identity = make(is_bot=_monitor_is_bot)
    assert identity.resolve(request(ua=f"{CHROME} AcmeMonitor/1.0"), now=NOW) is None
    # The built-in check no longer applies: curl is a visitor by this site's rules.
    assert identity.resolve(request(ua="curl/8.5.0"), now=NOW) is not None
    assert identity.resolve(request(ua=CHROME), now=NOW) is not None


def test_is_bot_can_extend_the_built_in_check() -> None:
    def is_bot(facts: RequestFacts) -> bool:
        return _monitor_is_bot(facts) or is_crawler(facts.headers.get("user-agent"))

    identity = make(is_bot=is_bot)
    assert identity.resolve(request(ua=f"{CHROME} AcmeMonitor/1.0"), now=NOW) is None
    assert identity.resolve(request(ua="curl/8.5.0"), now=NOW) is None
    assert identity.resolve(request(ua=CHROME), now=NOW) is not None


def test_pixelmirror_passes_is_bot_to_its_identity() -> None:
    mirror = PixelMirror(pixel_id="1", secret_key=KEY, is_bot=_monitor_is_bot)
    try:
        assert mirror.begin(request(ua=f"{CHROME} AcmeMonitor/1.0")) is None
        assert mirror.begin(request(ua="curl/8.5.0")) is not None
    finally:
        mirror.close()


def test_bot_filter_off_also_turns_is_bot_off() -> None:
    identity = make(is_bot=lambda facts: True, bot_filter=False)
    assert identity.resolve(request(), now=NOW) is not None


def test_a_failing_is_bot_falls_back_to_the_built_in_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(facts: RequestFacts) -> bool:
        raise RuntimeError("boom")

    identity = make(is_bot=broken)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        assert identity.resolve(request(ua="curl/8.5.0"), now=NOW) is None
        assert identity.resolve(request(ua=CHROME), now=NOW) is not None
    assert "is_bot callable failed" in caplog.text
