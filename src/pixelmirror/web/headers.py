"""Whether a response gets the snippet, and its headers after the splice.

Pure, no framework imports: the adapters' page requests call these on every response, on
header tuples.

Security-minded defaults:

* only uncompressed HTML that a browser will render is touched (no ``HEAD``, no redirects, no
  partial content, no downloads, no ``Content-Encoding`` other than ``identity``);
* a page that carries a per-visitor ``event_id`` is made ``private`` so no shared cache hands the
  same id to other visitors (Meta would merge them into one event);
* validators and digests that the splice makes wrong (strong ``ETag``, ``Content-MD5``,
  ``Digest``) are dropped rather than left lying.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pixelmirror._memo import Memo

__all__ = ["csp_nonce", "page_policies", "rewrite_headers", "should_inject"]

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})

# Statuses whose body nobody renders (or that have none): informational, No Content, Reset
# Content, Partial Content (a byte range of a page cannot take an insertion), every redirect.
_NO_RENDER_2XX = frozenset({204, 205, 206})

# Cache-Control directives, split on commas outside quoted strings.
_DIRECTIVE = re.compile(r"""(?:[^,"]|"(?:[^"\\]|\\.)*"?)+""")

# Headers that describe the exact body bytes: wrong after a splice.
_DIGEST_HEADERS = frozenset({"content-md5", "digest", "content-digest", "repr-digest"})

# Dropped from a page carrying a visitor's own ids: Last-Modified (a 304 would replay an old
# visit's ids) and the caching rules aimed at shared caches only, which outrank Cache-Control
# there (RFC 9213's CDN-Cache-Control, Surrogate-Control, Cloudflare's and Vercel's CDN fields,
# Akamai's Edge-Control, nginx's X-Accel-Expires): a ``max-age`` in one of them would still
# share the page. Without them the cache falls back to the now private Cache-Control.
_PRIVATE_DROPS = frozenset(
    {
        "last-modified",
        "cdn-cache-control",
        "surrogate-control",
        "cloudflare-cdn-cache-control",
        "vercel-cdn-cache-control",
        "edge-control",
        "x-accel-expires",
    }
)
# Every header name rewrite_headers may change or drop.
_REWRITTEN = _DIGEST_HEADERS | _PRIVATE_DROPS | {"content-length", "etag", "cache-control"}


def should_inject(method: str, status: int, headers: Sequence[tuple[str, str]]) -> bool:
    """Whether a response with this method, status and headers may receive the snippet.

    Eligible: a rendered HTML or XHTML page (2xx other than 204/205/206, or 4xx/5xx), not to a
    ``HEAD`` request, without a ``Content-Encoding`` other than ``identity`` (the middleware sits
    inside compression, so a compressed body passes untouched), not a partial body, not an
    attachment. Anything odd answers False rather than raising.
    """
    return page_policies(method, status, headers) is not None


def csp_nonce(headers: Sequence[tuple[str, str]]) -> str | None:
    """The ``'nonce-...'`` of the first ``Content-Security-Policy`` header that has one for
    scripts."""
    for name, value in headers:
        if name.lower() == "content-security-policy":
            match = _CSP_NONCE.search(value)
            if match:
                return match.group(1)
    return None


_CSP_NONCE = re.compile(r"(?:^|;)\s*(?:script-src|default-src)\b[^;]*?'nonce-([A-Za-z0-9+/_=-]+)'")

# What should_inject reads of a header, by its name stripped and in lower case.
_OTHER, _CONTENT_TYPE, _CONTENT_ENCODING, _CONTENT_DISPOSITION, _CONTENT_RANGE, _POLICY = range(6)
_READ = {
    "content-type": _CONTENT_TYPE,
    "content-encoding": _CONTENT_ENCODING,
    "content-disposition": _CONTENT_DISPOSITION,
    "content-range": _CONTENT_RANGE,
    "content-security-policy": _POLICY,
}


def page_policies(
    method: str, status: int, headers: Sequence[tuple[str, str]]
) -> list[tuple[str, str]] | None:
    """:func:`should_inject` and the response's ``Content-Security-Policy`` headers, in one
    pass over its headers: None when it may not take the snippet, else those headers (most
    often none) for :func:`csp_nonce`."""
    try:
        if method.upper() == "HEAD":
            return None
        if isinstance(status, bool) or not isinstance(status, int):
            return None
        if not (200 <= status < 300 or 400 <= status < 600) or status in _NO_RENDER_2XX:
            return None
        content_type: str | None = None
        policies: list[tuple[str, str]] = []
        kinds = _KINDS
        for pair in headers:
            name, value = pair
            kind = kinds[name]
            if kind == _OTHER:
                continue
            if kind == _CONTENT_TYPE:
                if content_type is not None:  # several mean ambiguous
                    return None
                content_type = value.split(";", 1)[0].strip().lower()
            elif kind == _CONTENT_ENCODING:
                for coding in value.split(","):
                    if coding.strip().lower() not in ("", "identity"):
                        return None
            elif kind == _CONTENT_DISPOSITION:
                if value.split(";", 1)[0].strip().lower() == "attachment":
                    return None
            elif kind == _CONTENT_RANGE:
                return None
            else:
                policies.append(pair)
        # Exactly one Content-Type: none means unknown.
        return policies if content_type in _HTML_TYPES else None
    except Exception:  # malformed input from the host app: never break the response
        return None


# What a header name is to should_inject, for the names a site sends again and again:
# one dictionary lookup, not two new strings per header.
_KINDS: Memo[str, int] = Memo(lambda name: _READ.get(name.strip().lower(), _OTHER))


def rewrite_headers(
    headers: Sequence[tuple[str, str]],
    *,
    added_length: int,
    set_cookies: Sequence[str] = (),
    private: bool = True,
) -> list[tuple[str, str]]:
    """The response headers after a successful splice of ``added_length`` bytes.

    With ``private`` false (a snippet that is the same for every visitor) the caching headers
    are left as the app set them; the rest applies either way.

    * ``Content-Length`` grows by ``added_length`` (absent stays absent; an unreadable one is
      dropped, since a wrong length would truncate or hang the response);
    * a strong ``ETag`` is dropped (the bytes changed), a weak ``W/`` one is kept unless
      ``private``; a private page also loses ``Last-Modified``, so a browser cannot answer
      304 and replay an old visit's ids;
    * ``Content-MD5``, ``Digest``, ``Content-Digest`` and ``Repr-Digest`` are dropped;
    * ``Cache-Control`` becomes private: ``public`` and ``s-maxage`` go, ``private`` is added in
      front, other directives stay; one that already says ``private`` or ``no-store`` is kept
      as is; when absent, ``private, no-cache`` is appended; the cache headers aimed at shared
      caches only (``CDN-Cache-Control``, ``Surrogate-Control``, ``Cloudflare-CDN-Cache-Control``,
      ``Vercel-CDN-Cache-Control``, ``Edge-Control``, ``X-Accel-Expires``) go;
    * one ``Set-Cookie`` per cookie is appended.

    Every other header is kept byte-identical and in order.
    """
    if private:
        plain = _plain_rewrite(headers, added_length, set_cookies)
        if plain is not None:
            return plain
    return _rewrite(headers, added_length, set_cookies, private)


# How _plain_rewrite reads a header name: kept, a Content-Length, or one only the general
# way rewrites; plus _NOT_LOWER when the name is not all lower case.
_KEEP, _LENGTH, _GENERAL, _NOT_LOWER = 0, 2, 4, 1


def _plain_kind(name: str) -> int:
    key = name.lower()
    kind = _KEEP if key not in _REWRITTEN else _LENGTH if key == "content-length" else _GENERAL
    return kind | _NOT_LOWER if key != name else kind


_PLAIN_KINDS: Memo[str, int] = Memo(_plain_kind)


def _plain_rewrite(
    headers: Sequence[tuple[str, str]], added_length: int, set_cookies: Sequence[str]
) -> list[tuple[str, str]] | None:
    """:func:`rewrite_headers` of a private page whose only header to change is its
    ``Content-Length`` (most pages: no caching headers, no digests): one pass, a dictionary
    lookup per name. None for any other page (the general way then)."""
    out: list[tuple[str, str]] = []
    lower = bool(headers)
    kinds = _PLAIN_KINDS
    for pair in headers:
        name, value = pair
        kind = kinds[name]
        if kind & _NOT_LOWER:
            lower = False
            kind ^= _NOT_LOWER
        if kind == _KEEP:
            out.append(pair if type(pair) is tuple else (name, value))
        elif kind == _LENGTH:
            try:
                length = int(value.strip())
            except ValueError:
                continue
            if length >= 0:
                out.append((name, str(length + added_length)))
        else:
            return None
    out.append(("cache-control" if lower else "Cache-Control", "private, no-cache"))
    if set_cookies:
        name = "set-cookie" if lower else "Set-Cookie"
        out.extend([(name, cookie) for cookie in set_cookies])
    return out


def _rewrite(
    headers: Sequence[tuple[str, str]],
    added_length: int,
    set_cookies: Sequence[str],
    private: bool,
) -> list[tuple[str, str]]:
    """:func:`rewrite_headers`, the general way."""
    keys = [name.lower() for name, _ in headers]
    cache_values = (
        [value for key, (_, value) in zip(keys, headers, strict=True) if key == "cache-control"]
        if "cache-control" in keys
        else []
    )
    keep_cache = not private or _already_private(cache_values)
    out: list[tuple[str, str]] = []
    added_private = False
    for key, (name, value) in zip(keys, headers, strict=True):
        if key not in _REWRITTEN:  # most headers: kept as they are
            out.append((name, value))
        elif key == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                continue
            if length < 0:
                continue
            out.append((name, str(length + added_length)))
        elif key == "etag":
            # A page with this visitor's ids must not be revalidated into another visit's.
            if value.lstrip().startswith("W/") and not private:
                out.append((name, value))
        elif key in _DIGEST_HEADERS or (private and key in _PRIVATE_DROPS):
            continue
        elif key == "cache-control" and not keep_cache:
            directives = [
                item
                for item in _directives(value)
                if _directive_name(item) not in ("public", "s-maxage", "private")
            ]
            if not added_private:
                directives.insert(0, "private")
                added_private = True
            if directives:
                out.append((name, ", ".join(directives)))
        else:
            out.append((name, value))
    # Names we add are in lower case when the app writes all of its own that way (ASGI style).
    lower = bool(keys) and keys == [name for name, _ in headers]
    if private and not cache_values:
        out.append(("cache-control" if lower else "Cache-Control", "private, no-cache"))
    if set_cookies:
        name = "set-cookie" if lower else "Set-Cookie"
        out.extend((name, cookie) for cookie in set_cookies)
    return out


def _directives(value: str) -> list[str]:
    return [item.strip() for item in _DIRECTIVE.findall(value) if item.strip()]


def _directive_name(directive: str) -> str:
    return directive.split("=", 1)[0].strip().lower()


def _already_private(values: Sequence[str]) -> bool:
    """Whether these Cache-Control values already keep the page out of shared caches."""
    for value in values:
        for item in _directives(value):
            name = _directive_name(item)
            # ``private="Set-Cookie"`` only makes one field private: the page stays shareable.
            if name == "no-store" or (name == "private" and "=" not in item):
                return True
    return False
