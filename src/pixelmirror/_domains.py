"""Host names and the Public Suffix List: on which domain a cookie may be set.

A browser refuses a cookie whose ``Domain`` is a public suffix (``com.pl``, ``tokyo.jp``,
``github.io``, ``s3.amazonaws.com``), so the widest domain a site may use is its registrable
domain: the public suffix plus one label. The list is the copy bundled with the
``publicsuffixlist`` package, read once from disk (no network); its private section (hosting
platforms) counts too, since browsers honour it.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from publicsuffixlist import PublicSuffixList

__all__ = [
    "HOSTNAME",
    "HOST_HEADER",
    "hostname",
    "is_ip",
    "is_local",
    "is_public_suffix",
    "load",
    "registrable_domain",
]

#: A lower-case DNS name (punycode for IDN), without a trailing dot.
HOSTNAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
#: A ``Host`` header value: a name or a bracketed IPv6 address, and maybe a port.
HOST_HEADER = re.compile(r"(?:[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


@functools.cache
def _suffixes() -> PublicSuffixList:
    # Parsing the list takes about a tenth of a second: once per process, on first use.
    return PublicSuffixList()


def load() -> None:
    """Read the list now, so that no request pays for it."""
    _suffixes()


def is_public_suffix(name: str) -> bool:
    """Whether ``name`` (lower-case, no trailing dot) is a public suffix itself."""
    return bool(_suffixes().is_public(name))


# Hosts repeat request after request: look each up once. Bounded, and thread-safe.
@functools.lru_cache(maxsize=4096)
def registrable_domain(name: str) -> str | None:
    """The public suffix of ``name`` plus one label (``shop.example.co.uk`` →
    ``example.co.uk``), or None when ``name`` is a public suffix itself."""
    found: str | None = _suffixes().privatesuffix(name)
    return found


def hostname(host: str) -> str | None:
    """The lower-case name of a ``Host`` value, without port, brackets or trailing dot."""
    if not HOST_HEADER.fullmatch(host):
        return None
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    name = host.partition(":")[0].rstrip(".").lower()
    return name if HOSTNAME.fullmatch(name) or is_ip(name) else None


def is_local(host: str) -> bool:
    """``localhost`` or a loopback address: browsers keep Secure cookies there over http."""
    name = hostname(host)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return is_ip(name) and ipaddress.ip_address(name).is_loopback


def is_ip(name: str) -> bool:
    if not (name[-1:].isdigit() or ":" in name):  # no top-level domain ends in a digit
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
