from __future__ import annotations

import random
import re
import socket
from typing import Any

import pytest

from identitykit import FBC, FBP, NOW, cookie, make, parse, request, resolve, signed
from pixelmirror import _domains, fbcookies
from pixelmirror.fbcookies import FB_MAX_AGE

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


def test_one_identity_gives_each_host_its_own_site_page_after_page() -> None:
    # Hosts seen before get the verdict kept for them; in any order, each keeps its own.
    identity = make()
    rng = random.Random(7)
    sites = [*FB_SITES] * 3
    rng.shuffle(sites)
    for host, domain, index in sites:
        visitor = resolve(identity, host=host)
        issued = cookie(visitor, "_fbp")
        assert issued is not None
        assert issued[1].get("domain") == domain, host
        assert visitor.fbp is not None
        assert visitor.fbp.startswith(f"fb.{index}."), host


def test_an_fbp_seen_before_gets_the_verdict_of_a_first_sight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _fbp values that matched are kept (bounded): page after page, in any order, each value
    # is kept or refused as on its first sight.
    monkeypatch.setattr(fbcookies, "_FBP_SEEN_KEPT", 8)
    rng = random.Random(3)
    pieces = ["fb", ".", "1", "17", "0", "x", "-", "_", "12345678901234567890"]
    values = [FBP, f"{FBP}.AbC", "fb.99.1.2", "fb.1.1.2." + "a" * 17]
    values += ["".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(40)]
    identity = make()
    for _ in range(600):
        value = rng.choice(values)
        valid = len(value) <= 64 and re.fullmatch(
            r"fb\.[0-9]{1,2}\.[0-9]{1,16}\.[0-9]{1,20}(?:\.[A-Za-z0-9_-]{1,16})?", value
        )
        visitor = resolve(identity, cookies={"_fbp": value})
        assert (visitor.fbp == value) == bool(valid), value
        assert (cookie(visitor, "_fbp") is None) == bool(valid), value
    assert len(fbcookies._FBP_SEEN) <= 8


@pytest.mark.parametrize("seed", range(3))
def test_a_header_naming_no_fb_cookie_reads_as_one_parsed(seed: int) -> None:
    # Headers with and without the fb cookies, and names close to theirs: each reads as its
    # parsed cookies say (a valid one kept, else a new _fbp).
    rng = random.Random(seed)
    identity = make()
    pairs = [f"_fbp={FBP}", f"_fbc={FBC}", f" _fbp = {FBP} ", "_fb=1", f"x_fbp={FBP}", "a=b"]
    for _ in range(300):
        header = ";".join(rng.sample(pairs, rng.randint(0, 3)))
        visitor = resolve(identity, headers={"cookie": header})
        cookies = request(headers={"cookie": header}).cookies
        assert (visitor.fbp == FBP) is (cookies.get("_fbp") == FBP), header
        assert visitor.fbc == cookies.get("_fbc"), header
        assert (cookie(visitor, "_fbp") is None) is (cookies.get("_fbp") == FBP), header
