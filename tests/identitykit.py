"""What the tests of the visitor's concerns share: settings, requests, signed tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from itsdangerous import TimestampSigner

from pixelmirror.config import Config
from pixelmirror.facts import RequestFacts
from pixelmirror.identity import (
    VISITOR_SALT,
    Identity,
    Visitor,
)
from pixelmirror.normalize import own_visitor_wire
from pixelmirror.user_fields import Drop, plain

KEY = "k" * 32
OLD_KEY = "o" * 32
OTHER_KEY = "x" * 32
NOW = 1_700_000_000.0
MAX_AGE = 34_000_000
VID = "AbCdEfGhIjKlMnOpQrSt_-"  # the shape of secrets.token_urlsafe(16)
FBP = "fb.1.1699999990000.1234567890"
FBC = "fb.1.1699999990000.IwAR1AbC"
TRUSTED = ("10.0.0.0/8", "2001:db8:ffff::/48")

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


class SignerAt(TimestampSigner):
    """itsdangerous' own signer with a fixed clock: tokens made the library's way."""

    def __init__(self, key: str, at: float, salt: str = VISITOR_SALT) -> None:
        super().__init__(key, salt=salt)
        self.at = at

    def get_timestamp(self) -> int:
        return int(self.at)


def signed(value: str = VID, *, key: str = KEY, at: float = NOW) -> str:
    return SignerAt(key, at).sign(value).decode()


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


def visitor_wire(
    external_id: str,
    client_ip: str | None,
    user_agent: str | None,
    fbc: str | None,
    fbp: str | None,
) -> tuple[str, tuple[str, ...]] | None:
    """``own_visitor_wire`` of any values, after each rule has been run and given its value
    back; None when a rule would change or drop one, or ``external_id`` is no lowercase
    SHA-256 hex: what the tests compare the unchecked writer and the events with."""
    try:
        if len(external_id) != 64 or bytes.fromhex(external_id).hex() != external_id:
            return None
        for wire, value in (
            ("client_ip_address", client_ip),
            ("client_user_agent", user_agent),
            ("fbc", fbc),
            ("fbp", fbp),
        ):
            if value is not None and plain(wire, value) != value:
                return None
    except (Drop, TypeError, ValueError):  # not a text, or not an address
        return None
    return own_visitor_wire(external_id, client_ip, user_agent, fbc, fbp)
