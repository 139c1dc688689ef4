"""Addresses and proxies: the client's IP and the page's URL as the browser used them.

``X-Forwarded-*`` and ``Forwarded`` are believed only when the socket peer is inside
``trusted_proxies``; otherwise the client is the peer itself. Addresses have one textual
form everywhere (:func:`parse_ip`): the client IP sent to Meta, the proxy check and the
beacon's per-address budget all read them through it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from pixelmirror._domains import HOST_HEADER
from pixelmirror.facts import RequestFacts

#: A trusted proxy's network, as ``PIXELMIRROR_TRUSTED_PROXIES`` lists them.
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["IPAddress", "Proxies", "canonical_ip", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Proxy hops walked in X-Forwarded-For / Forwarded before giving up.
_MAX_HOPS = 16


def canonical_ip(ip: IPAddress) -> IPAddress:
    """One address, one form: IPv4-mapped IPv6 (``::ffff:1.2.3.4``, from a dual-stack
    socket) becomes the IPv4 address; an IPv6 zone (``%eth0`` names an interface of ours) is
    dropped."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:
            return ipaddress.IPv6Address(int(ip))
    return ip


def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer, a proxy hop or our own client IP, in canonical form: quotes,
    ``[...]`` and ports are stripped, IPv4-mapped IPv6 becomes IPv4, a zone id is dropped.
    None for anything that is no address."""
    text = text.strip().strip('"')
    if len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None  # unclosed: slicing to -1 would make "[::1" the address "::"
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return canonical_ip(ipaddress.ip_address(text))
    except ValueError:
        return None


class Proxies:
    """The request as the browser made it, through the ``trusted`` proxies."""

    __slots__ = ("_address", "_v4", "_v6")

    def __init__(self, trusted: Iterable[IPNetwork]) -> None:
        trusted = tuple(trusted)
        self._v4 = tuple(n for n in trusted if n.version == 4)
        self._v6 = tuple(n for n in trusted if n.version == 6)
        # The same few addresses (the proxies' above all) come back on request after request:
        # parse and classify each text once. Bounded, and safe to share between threads.
        self._address: Callable[[str], tuple[str, bool] | None] = functools.lru_cache(maxsize=4096)(
            self._classify
        )

    def peer(self, facts: RequestFacts) -> tuple[str | None, bool]:
        """The canonical peer address, and whether it is a trusted proxy."""
        found = self._address(facts.peer) if facts.peer else None
        return found if found is not None else (None, False)

    def client_ip(self, facts: RequestFacts, peer: str | None, trusted: bool) -> str | None:
        """The client's address: the socket ``peer``, unless that is a trusted proxy; then
        the first untrusted address walking ``X-Forwarded-For`` (or, without it, ``Forwarded:
        for=``) from the right. An unparsable hop stops the walk at the last address known.
        """
        if peer is None:
            return None
        known = peer
        if trusted:
            # X-Forwarded-For wins when both are present: the proxy that sets one may pass a
            # client's forged copy of the other through untouched, so configure the proxy to
            # overwrite the header pixelmirror reads.
            forwarded_for = facts.headers.get("x-forwarded-for")
            if forwarded_for is not None:
                hops = forwarded_for.rsplit(",", _MAX_HOPS)
            else:
                hops = _forwarded_params(facts.headers.get("forwarded"), "for")
            for hop in reversed(hops):
                found = self._address(hop.strip())
                if found is None:
                    break
                known, hop_trusted = found
                if not hop_trusted:
                    break
        return known

    def origin(self, facts: RequestFacts, trusted: bool) -> tuple[str, str]:
        """Scheme and host the browser used. Of several forwarded values the rightmost
        counts: it was set by the proxy nearest to us, which we trust."""
        scheme, host = facts.scheme, facts.host
        if not trusted:
            return scheme, host
        headers = facts.headers
        proto = headers.get("x-forwarded-proto")
        forwarded_host = headers.get("x-forwarded-host")
        if proto is None and forwarded_host is None and "forwarded" in headers:
            proto = _last(_forwarded_params(headers["forwarded"], "proto"))
            forwarded_host = _last(_forwarded_params(headers["forwarded"], "host"))
        if proto is not None:
            proto = proto.rpartition(",")[2].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
        if forwarded_host is not None:
            forwarded_host = forwarded_host.rpartition(",")[2].strip()
            if HOST_HEADER.fullmatch(forwarded_host):
                host = forwarded_host
        return scheme, host

    def page_url(self, facts: RequestFacts) -> str:
        """The URL as the browser sees it: ``facts.url``, with the scheme and host of
        ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (or ``Forwarded: proto= host=``) when the
        peer is a trusted proxy."""
        trusted = self.peer(facts)[1]
        if not trusted:
            return facts.url
        scheme, host = self.origin(facts, trusted)
        query = f"?{facts.query}" if facts.query else ""
        return f"{scheme}://{host}{facts.path}{query}"

    def _classify(self, text: str) -> tuple[str, bool] | None:
        """``(canonical address, is a trusted proxy)``, or None when ``text`` is no address."""
        ip = parse_ip(text)
        if ip is None:
            return None
        networks: tuple[IPNetwork, ...] = self._v4 if ip.version == 4 else self._v6
        return ip.compressed, any(ip in network for network in networks)


def _forwarded_params(header: str | None, key: str) -> list[str]:
    """The ``key=`` values of an RFC 7239 ``Forwarded`` header, left to right; an element
    without one gives ``""`` (unparsable, so a walk stops there)."""
    if not header:
        return []
    values = []
    for element in header.split(",")[-_MAX_HOPS:]:
        found = ""
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == key:
                found = value.strip().strip('"')
                break
        values.append(found)
    return values


def _last(values: list[str]) -> str | None:
    return next((value for value in reversed(values) if value), None)
