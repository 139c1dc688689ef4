"""Meta's browser cookies ``_fbp`` and ``_fbc``: read, validated, and minted when missing.

They are set (only when ``fb_cookies`` is on, and only when new or changed) on the
registrable domain, without ``HttpOnly`` because the pixel rewrites them. The registrable
domain is ``cookie_domain`` when the host lies within it, else the host's public suffix plus
one label, by the Public Suffix List (private section included: ``app.github.io`` is a site
of its own). A host that is a public suffix itself, an IP address or ``localhost`` gets
host-only cookies.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from urllib.parse import parse_qsl

from pixelmirror._domains import hostname, is_ip, registrable_domain
from pixelmirror._urandom import Pool
from pixelmirror.config import Config
from pixelmirror.facts import RequestFacts
from pixelmirror.proxies import Proxies

__all__ = ["FB_MAX_AGE", "FbCookies"]

#: Lifetime of ``_fbp`` / ``_fbc``: 90 days, as the pixel sets them.
FB_MAX_AGE = 7_776_000

# fb.{subdomainIndex}.{creationTimeMs}.{random}[.{appendix}]. The Parameter Builder may add
# an appendix to both cookies, so both accept it.
_FBP = re.compile(r"fb\.[0-9]{1,2}\.[0-9]{1,16}\.[0-9]{1,20}(?:\.[A-Za-z0-9_-]{1,16})?")
# An fbclid is any cookie-safe character but "." (RFC 6265 cookie-octet minus "."), so the
# value can go into a Set-Cookie as it is and segment 3 is always the whole fbclid.
_FBCLID = r"[\x21\x23-\x2b\x2d\x2f-\x3a\x3c-\x5b\x5d-\x7e]{1,500}"
_FBCLID_ONLY = re.compile(_FBCLID)
_FBC = re.compile(rf"fb\.[0-9]{{1,2}}\.[0-9]{{1,16}}\.({_FBCLID})(?:\.[A-Za-z0-9_-]{{1,16}})?")

_FB_SUFFIX = f"; Path=/; Max-Age={FB_MAX_AGE}"
# _fbp's random part: uniform below 2**31, as secrets.randbelow(2**31) draws it.
_fbp_numbers = Pool(
    lambda raw: int.from_bytes(raw, "big") >> 1,
    size=4,
    mint_all=lambda raw: [number >> 1 for number in struct.unpack(f">{len(raw) // 4}I", raw)],
)
_SITES_KEPT = 256
_NO_COOKIES: Mapping[str, str] = {}
# _fbp values that matched _FBP (at most 64 characters each).
_FBP_SEEN_KEPT = 4096
_FBP_SEEN: set[str] = set()


class FbCookies:
    """``_fbp`` / ``_fbc`` of a request, by the settings ``fb_cookies`` and ``cookie_domain``."""

    __slots__ = ("_domain", "_enabled", "_proxies", "_sites")

    def __init__(self, config: Config, proxies: Proxies) -> None:
        self._domain = config.cookie_domain
        self._enabled = config.fb_cookies
        self._proxies = proxies
        # A site answers to a few hosts: each one's verdict is kept (bounded: the Host
        # header is the client's to choose).
        self._sites: dict[str, tuple[int, str, str]] = {}

    def read(
        self, facts: RequestFacts, trusted: bool, now: float, set_cookies: list[str]
    ) -> tuple[str | None, str | None]:
        """``(_fbp, _fbc)`` for the server event: the browser's when valid, else minted
        (``_fbc`` from an ``fbclid`` in the URL or the referrer). Cookies to set are added to
        ``set_cookies``; ``trusted`` says whether the peer is a trusted proxy."""
        # A header naming neither cookie (a new visitor's) needs no parse.
        cookies = facts.cookies if "_fb" in facts.headers.get("cookie", "") else _NO_COOKIES
        fbp = cookies.get("_fbp")
        # A browser sends its _fbp page after page: the ones that matched are kept.
        if fbp is not None and fbp not in _FBP_SEEN:
            if len(fbp) > 64 or not _FBP.fullmatch(fbp):
                fbp = None
            else:
                if len(_FBP_SEEN) >= _FBP_SEEN_KEPT:
                    _FBP_SEEN.clear()
                _FBP_SEEN.add(fbp)
        fbc = cookies.get("_fbc")
        stored = _FBC.fullmatch(fbc) if fbc is not None and len(fbc) <= 600 else None
        fbc = stored[0] if stored else None

        query = facts.query
        fbclid = _fbclid(query) if "fbclid" in query else None
        if fbclid is None:
            referer = facts.headers.get("referer")
            if referer and "fbclid" in referer:
                fbclid = _fbclid(referer.partition("#")[0].partition("?")[2])
        new_click = fbclid is not None and (stored is None or stored[1] != fbclid)
        millis = int(now * 1000)

        if not self._enabled:
            if new_click:
                # Not stored in a cookie: Meta asks for subdomain index 1 then. The fbclid
                # matches the pixel's own _fbc, so this only adds match quality.
                fbc = f"fb.1.{millis}.{fbclid}"
            return fbp, fbc
        if fbp is not None and not new_click:
            return fbp, fbc

        # Without a trusted proxy the origin is the request's own, and a host seen before
        # has its site kept: no call for either.
        scheme, host = (
            self._proxies.origin(facts, trusted) if trusted else (facts.scheme, facts.host)
        )
        index, suffix, secure_suffix = self._sites.get(host) or self._site(host)
        if scheme == "https":
            suffix = secure_suffix
        if fbp is None:
            fbp = f"fb.{index}.{millis}.{_fbp_numbers.draw()}"
            set_cookies.append(f"_fbp={fbp}{suffix}")
        if new_click:
            fbc = f"fb.{index}.{millis}.{fbclid}"
            set_cookies.append(f"_fbc={fbc}{suffix}")
        return fbp, fbc

    def _site(self, host: str) -> tuple[int, str, str]:
        """``(subdomain index, cookie attributes over http, over https)`` of the fb cookies
        of a host."""
        site = self._sites.get(host)
        if site is None:
            domain, index = self._site_of(host)
            suffix = _FB_SUFFIX + (f"; Domain={domain}" if domain else "") + "; SameSite=Lax"
            site = (index, suffix, suffix + "; Secure")
            if len(self._sites) >= _SITES_KEPT:
                self._sites.clear()
            self._sites[host] = site
        return site

    def _site_of(self, host: str) -> tuple[str | None, int]:
        name = hostname(host)
        if name is None or "." not in name or name.endswith(".localhost") or is_ip(name):
            return None, 0  # IP, localhost, a single-label intranet name, or nonsense
        if self._domain and (name == self._domain or name.endswith("." + self._domain)):
            return self._domain, self._domain.count(".")
        domain = registrable_domain(name)
        if domain is None:  # the host is a public suffix itself: host-only is all it may have
            return None, name.count(".")
        return domain, domain.count(".")


def _fbclid(query: str) -> str | None:
    """The first ``fbclid`` of a query string, when it is usable (1-500 cookie-safe
    characters, no ``.``). Case is kept: fbclid is case-sensitive."""
    if "fbclid" not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "fbclid":
            return value if _FBCLID_ONLY.fullmatch(value) else None
    return None
