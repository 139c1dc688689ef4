from __future__ import annotations

import pytest

from identitykit import TRUSTED, make, request, resolve
from pixelmirror.beacon import ip_budget_key
from pixelmirror.config import Config
from pixelmirror.facts import RequestFacts
from pixelmirror.proxies import Proxies, parse_ip


def client_ip(facts: RequestFacts) -> str | None:
    proxies = Proxies(Config(trusted_proxies=TRUSTED).trusted_proxies)
    return proxies.client_ip(facts, *proxies.peer(facts))


# --------------------------------------------------------------------------------------------
# Client IP and page URL


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
    assert client_ip(request(peer=peer, headers=headers)) == expected
    assert resolve(make(trusted_proxies=TRUSTED), peer=peer, headers=headers).client_ip == expected


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


# One address in every textual form a peer, a proxy hop or a caller may give it.
ADDRESS_FORMS = [
    pytest.param("203.0.113.9", "203.0.113.9", id="ipv4"),
    pytest.param("203.0.113.9:8080", "203.0.113.9", id="ipv4-port"),
    pytest.param('"203.0.113.9"', "203.0.113.9", id="quoted"),
    pytest.param("::ffff:203.0.113.9", "203.0.113.9", id="ipv4-mapped"),
    pytest.param("[::ffff:cb00:7109]:443", "203.0.113.9", id="ipv4-mapped-hex-bracketed"),
    pytest.param("2001:DB8:0:0:0:0:0:1", "2001:db8::1", id="ipv6-long-upper"),
    pytest.param("[2001:db8::1]:80", "2001:db8::1", id="ipv6-bracketed-port"),
    pytest.param("fe80::1%eth0", "fe80::1", id="ipv6-zone"),
]


@pytest.mark.parametrize(("text", "canonical"), ADDRESS_FORMS)
def test_every_form_of_an_address_is_one_address(text: str, canonical: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    assert ip.compressed == canonical
    assert ip_budget_key(text) == ip_budget_key(canonical)
    assert client_ip(request(peer=text)) == canonical


@pytest.mark.parametrize(
    "text", ["", "not an address", "1.2.3", "[::1", "[203.0.113.9", "[", "1" * 70, "::ffff::1"]
)
def test_what_is_no_address_parses_to_none(text: str) -> None:
    assert parse_ip(text) is None
