"""Host names and the Public Suffix List: on which domain a cookie may be set.

A browser refuses a cookie whose ``Domain`` is a public suffix (``com.pl``, ``tokyo.jp``,
``github.io``, ``s3.amazonaws.com``), so the widest domain a site may use is its registrable
domain: the public suffix plus one label. The list is the copy bundled with the
``publicsuffixlist`` package, read once from disk (no network); its private section (hosting
platforms) counts too, since browsers honour it.
"""

from __future__ import annotations

import functools
import re

from publicsuffixlist import PublicSuffixList

__all__ = ["HOSTNAME", "is_public_suffix", "load", "registrable_domain"]

#: A lower-case DNS name (punycode for IDN), without a trailing dot.
HOSTNAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


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
