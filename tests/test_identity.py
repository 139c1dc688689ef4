from __future__ import annotations

import ipaddress
import logging
import random
import re
from typing import Any

import pytest
from itsdangerous import TimestampSigner

from identitykit import (
    CHROME,
    FBC,
    FBP,
    KEY,
    MAX_AGE,
    NOW,
    OLD_KEY,
    OTHER_KEY,
    SAFARI,
    TRUSTED,
    VID,
    cookie,
    make,
    parse,
    request,
    resolve,
    signed,
)
from pixelmirror.config import Config, ConfigError
from pixelmirror.facts import RequestFacts
from pixelmirror.identity import (
    CLOCK_SKEW,
    VISITOR_SALT,
    Visitor,
    is_crawler,
)
from pixelmirror.normalize import sha256_hex, wire_user_data
from pixelmirror.web.carry import Carry

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


@pytest.mark.parametrize(
    "token",
    [
        signed(),
        signed(key=OLD_KEY),
        signed(at=NOW - MAX_AGE // 2),
        signed("not an id!"),
        signed(key=OTHER_KEY),
    ],
)
def test_a_token_seen_before_gets_the_verdict_of_a_first_sight_at_every_age(token: str) -> None:
    # One identity sees the token again and again as it ages (its verdict kept after the first
    # page); each answer is what an identity seeing it for the first time gives.
    seen = make()
    for later in (0, 60, MAX_AGE // 2, MAX_AGE, MAX_AGE + 1, -CLOCK_SKEW - 1):
        facts = request(cookies={"_pm_vid": token})
        again = seen.resolve(facts, now=NOW + later)
        first = make().resolve(request(cookies={"_pm_vid": token}), now=NOW + later)
        assert again is not None
        assert first is not None
        assert (again.visitor_id == VID) is (first.visitor_id == VID)
        assert again.external_id == sha256_hex(again.visitor_id)
        assert [c.split("=", 1)[0] for c in again.set_cookies] == [
            c.split("=", 1)[0] for c in first.set_cookies
        ]


def _without_random_parts(visitor: Visitor) -> str:
    """The visitor's repr with a new visitor's id, hash and token, and a new _fbp, masked."""
    text = repr(visitor)
    minted = dict(parse(set_cookie)[:2] for set_cookie in visitor.set_cookies)
    if visitor.visitor_id not in (VID, VID2):
        text = text.replace(minted["_pm_vid"], "<token>")
        text = text.replace(visitor.visitor_id, "<id>").replace(visitor.external_id, "<hash>")
    if "_fbp" in minted:
        text = text.replace(minted["_fbp"], "<fbp>")
    return text


@pytest.mark.parametrize("seed", range(3))
def test_one_identity_page_after_page_answers_as_a_fresh_one(seed: int) -> None:
    # One identity keeps token verdicts and returning visitors; each answer must be what an
    # identity seeing the request first gives (a new visitor's random id aside).
    rng = random.Random(seed)
    kept = make(trusted_proxies=TRUSTED)
    tokens = [signed(), signed(VID2), signed(key=OLD_KEY), signed(at=NOW - MAX_AGE // 2), "x"]
    for _ in range(400):
        cookies = {"_pm_vid": rng.choice(tokens), "_fbp": rng.choice([FBP, "fb.bad", ""])}
        if rng.random() < 0.3:
            cookies["_fbc"] = rng.choice([FBC, "fb.1.2.x.y.z"])
        facts = request(
            cookies={name: value for name, value in cookies.items() if value},
            ua=rng.choice([CHROME, SAFARI, " " + CHROME]),
            query=rng.choice(["", "fbclid=IwAR1AbC", "fbclid=Other"]),
            peer=rng.choice(["203.0.113.9", "10.0.0.1", "2001:db8::1"]),
            headers={"x-forwarded-for": rng.choice(["198.51.100.7", "198.51.100.8"])},
        )
        now = NOW + rng.choice([0, 1, 60, MAX_AGE // 2 + 5, MAX_AGE + 1])
        again = kept.resolve(facts, now=now)
        first = make(trusted_proxies=TRUSTED).resolve(facts, now=now)
        assert again is not None
        assert first is not None
        assert _without_random_parts(again) == _without_random_parts(first)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"consent_cookie": "ok", "honor_gpc": True, "fb_cookies": False}, id="gated"),
    ],
)
def test_a_request_asked_again_answers_as_to_a_fresh_identity(
    seed: int, settings: dict[str, Any]
) -> None:
    # The same few requests again and again, at clocks back and forth across the ages that
    # matter: the visitor kept for a request is what a fresh identity makes of it (a token
    # from the future before a good one, crawlers, fbclids, forwarded hops and consent
    # included).
    rng = random.Random(seed)
    kept = make(trusted_proxies=TRUSTED, **settings)
    tokens = [
        signed(),
        signed(VID2, at=NOW - MAX_AGE // 2 + 30),
        signed(key=OLD_KEY),
        signed(VID2, at=NOW + CLOCK_SKEW + 60),
        "x",
    ]
    asked = []
    for _ in range(16):
        pairs = [f"_pm_vid={token}" for token in rng.sample(tokens, rng.randint(0, 2))]
        for pair, odds in (
            ("_fbp=" + FBP, 0.8),
            ("_fbc=" + FBC, 0.3),
            ("ok=1", 0.7),
            ("ok=0", 0.2),
        ):
            if rng.random() < odds:
                pairs.append(pair)
        rng.shuffle(pairs)
        headers = {"cookie": "; ".join(pairs)}
        for name, values in (
            ("x-forwarded-for", ["198.51.100.7", "10.0.0.2, 198.51.100.8"]),
            ("forwarded", ["for=198.51.100.9"]),
            ("sec-gpc", ["1", "0"]),
            ("referer", ["https://shop.example/", "https://l.facebook.com/?fbclid=IwAR2x"]),
        ):
            if rng.random() < 0.4:
                headers[name] = rng.choice(values)
        asked.append(
            request(
                headers=headers,
                ua=rng.choice([CHROME, SAFARI, "curl/8.0"]),
                query=rng.choice(["", "", "fbclid=IwAR1AbC"]),
                peer=rng.choice(["203.0.113.9", "10.0.0.1"]),
            )
        )
    # A returning visitor behind a trusted proxy, whose token from the future comes in date
    # in a while, and the same request but for one header each.
    base = {"cookie": f"_pm_vid={tokens[3]}; _pm_vid={tokens[0]}; _fbp={FBP}; ok=1"}
    for extra in (
        {},
        {"sec-gpc": "1"},
        {"x-forwarded-for": "198.51.100.7"},
        {"forwarded": "for=198.51.100.9"},
        {"user-agent": SAFARI},
        {"referer": "https://l.facebook.com/?fbclid=IwAR2x"},
    ):
        asked.append(request(headers={**base, **extra}, peer="10.0.0.1"))
    asked.append(request(headers=base, peer="10.0.0.1", query="fbclid=IwAR1AbC"))
    answered = 0
    for _ in range(1500):
        facts = rng.choice(asked)
        now = NOW + rng.choice([0, 1, 30, 90, 200, MAX_AGE // 2 - 60, MAX_AGE // 2 + 60])
        again = kept.resolve(facts, now=now)
        first = make(trusted_proxies=TRUSTED, **settings).resolve(facts, now=now)
        assert (again is None) is (first is None), facts
        if again is not None and first is not None:
            assert _without_random_parts(again) == _without_random_parts(first), facts
            answered += 1
    assert answered > 100
    assert kept._asked  # some were kept, and answered again


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
    identity.page_url(facts)
    assert Carry(Config(pixel_id="1", secret_key=(KEY,))).read(facts) == []
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


@pytest.mark.parametrize("seed", range(3))
def test_a_visitor_carries_the_wire_user_data_normalising_gives(seed: int) -> None:
    # Peers and forwarded hops in every form (mapped, zoned, bracketed with a port), user
    # agents with quotes, escapes, unicode and control characters, cookies or none.
    rng = random.Random(seed)
    identity = make(trusted_proxies=TRUSTED, bot_filter=False)
    odd = '"\\é€\u2028\u0000\u001f\t\n😀 '
    straight = 0
    for _ in range(400):
        v4 = ".".join(str(rng.randint(0, 255)) for _ in range(4))
        v6 = str(ipaddress.IPv6Address(rng.getrandbits(128)))
        address = rng.choice([v4, v6, f"::ffff:{v4}", f"fe80::{rng.randint(1, 99)}%eth0"])
        peer = rng.choice([address, f"[{v6}]:443", f"{v4}:8080", "10.0.0.1", "garbage"])
        ua = rng.choice([CHROME, SAFARI, None, "", "".join(rng.choices(odd + "Mozilla/5.0", k=20))])
        cookies = {"_pm_vid": rng.choice([signed(), "x"])}
        if rng.random() < 0.5:
            cookies["_fbp"] = FBP
        if rng.random() < 0.3:
            cookies["_fbc"] = FBC
        facts = request(
            cookies=cookies,
            ua=ua,
            peer=peer,
            query=rng.choice(["", "fbclid=IwAR1AbC"]),
            headers={"x-forwarded-for": address} if rng.random() < 0.5 else {},
        )
        visitor = identity.resolve(facts, now=NOW)
        assert visitor is not None
        user_data = {
            "external_id": visitor.external_id,
            "client_ip_address": visitor.client_ip,
            "client_user_agent": visitor.user_agent,
            "fbp": visitor.fbp,
            "fbc": visitor.fbc,
        }
        normalised = wire_user_data(user_data)
        # The rules keep every value identity makes: no visitor takes the general road.
        assert visitor.wire == (normalised.text(), tuple(normalised.data)), facts
        straight += visitor.user_agent is not None
    assert straight > 200


def test_a_returning_visitor_with_an_outsized_user_agent_is_read_afresh_not_kept() -> None:
    # The client chooses its headers: a User-Agent longer than any browser's is answered the
    # same, page after page, without a copy of it kept per request.
    identity = make()
    long_agent = "Mozilla/5.0 " + "x" * 5000
    cookies = {"_pm_vid": signed(), "_fbp": FBP}
    first = identity.resolve(request(cookies=cookies, ua=long_agent), now=NOW)
    again = identity.resolve(request(cookies=cookies, ua=long_agent), now=NOW)
    assert first == again
    assert first.user_agent == long_agent
    assert not first.set_cookies
    assert first.wire is not None
    assert long_agent in first.wire[0]
    assert not identity._returning
    assert not identity._asked
    usual = identity.resolve(request(cookies=cookies), now=NOW)
    assert usual.user_agent == CHROME
    assert identity._returning
    assert identity._asked
