"""The beacon endpoint's guards: a public write path, so every request is checked.

Pure except for the rate limiter's memory. :mod:`pixelmirror.mirror` answers the beacon;
this module decides whether a request may be answered at all: same origin only, a bounded
JSON body, event names from an allow-list, and per-visitor and per-IP rate limits (an IPv6
address counts by its /64).
"""

from __future__ import annotations

import ipaddress
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pixelmirror.facts import RequestFacts
from pixelmirror.proxies import parse_ip

#: Largest beacon body read, in bytes.
MAX_BODY = 8 * 1024
#: Most events one beacon may ask for.
MAX_EVENTS = 10
#: Largest ``custom_data`` of one browser event, as JSON bytes.
MAX_CUSTOM_DATA = 2 * 1024
MAX_URL = 2048


class BeaconRefused(Exception):
    """A beacon request that gets a 4xx, with a short reason for the body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class BrowserRequest:
    """What a page asked for: its URL, its referrer, and events (name, custom_data)."""

    page_url: str
    referrer: str | None
    events: tuple[tuple[str, Mapping[str, object]], ...]


def check_origin(facts: RequestFacts, origin: str) -> None:
    """Refuse anything but a same-origin request from the site's own pages.

    ``origin`` is the site's ``scheme://host`` as the browser sees it. Browsers send
    ``Origin`` on every POST from a page; ``Sec-Fetch-Site`` covers the rest.
    """
    if facts.method != "POST":
        raise BeaconRefused(405, "the beacon takes POST only")
    sent_origin = facts.headers.get("origin")
    if sent_origin is not None:
        if sent_origin != origin:
            raise BeaconRefused(403, "cross-origin beacon refused")
    elif facts.headers.get("sec-fetch-site") != "same-origin":
        raise BeaconRefused(403, "the beacon needs a same-origin request")


def parse_request(body: bytes, *, origin: str, allowed: Collection[str]) -> BrowserRequest:
    """Validate a beacon body: ``{"url", "referrer", "events": [{"event", "custom_data"}]}``."""
    if len(body) > MAX_BODY:
        raise BeaconRefused(413, f"beacon body over {MAX_BODY} bytes")
    try:
        # NaN and Infinity (spelled out, or a float too big to be finite) are no JSON: they
        # would come back out as invalid JSON in the events' payloads.
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):  # a body nested thousands deep is not a beacon
        raise BeaconRefused(400, "beacon body is not JSON") from None
    if not isinstance(data, dict):
        raise BeaconRefused(400, "beacon body must be a JSON object")
    url = data.get("url")
    if not isinstance(url, str) or len(url) > MAX_URL or not _same_origin(url, origin):
        raise BeaconRefused(400, "url must be a page of this site")
    referrer = data.get("referrer")
    if referrer is not None and (not isinstance(referrer, str) or len(referrer) > MAX_URL):
        raise BeaconRefused(400, "referrer must be a URL")
    events = data.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise BeaconRefused(400, f"events must be a list of 1 to {MAX_EVENTS}")
    parsed = []
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise BeaconRefused(400, "each event needs an event name")
        name = event["event"]
        if name not in allowed:
            raise BeaconRefused(400, f"event {name[:50]!r} is not allowed from the browser")
        custom_data = event.get("custom_data") or {}
        if not isinstance(custom_data, dict):
            raise BeaconRefused(400, "custom_data must be an object")
        if len(json.dumps(custom_data)) > MAX_CUSTOM_DATA:
            raise BeaconRefused(413, f"custom_data over {MAX_CUSTOM_DATA} bytes")
        parsed.append((name, custom_data))
    return BrowserRequest(url, referrer or None, tuple(parsed))


def ip_budget_key(client_ip: str | None) -> str:
    """Whose per-IP beacon budget a client address spends: an IPv4 address's own, an IPv6
    address's /64 (one host is handed a whole /64 and may send from any address in it)."""
    if client_ip is None:
        return "-"
    ip = parse_ip(client_ip)
    if ip is None:
        return client_ip
    if ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return ip.compressed


def _no_constant(name: str) -> object:
    raise BeaconRefused(400, f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise BeaconRefused(400, f"{text[:20]} is too large a number")
    return number


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, or None if it cannot be read."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _same_origin(url: str, origin: str) -> bool:
    return origin_of(url) == origin


class RateLimiter:
    """Token buckets by key (a visitor, an IP): ``per_minute`` events, bursts up to that.

    Remembers at most ``max_keys`` keys, forgetting the least recently seen, so memory stays
    bounded however many visitors come.
    """

    def __init__(self, per_minute: int, *, max_keys: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.refill = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str, cost: int = 1, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, seen = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - seen) * self.refill)
            allowed = tokens >= cost
            self._buckets[key] = (tokens - cost if allowed else tokens, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed
