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

__all__ = ["rewrite_headers", "should_inject"]

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
    try:
        if method.upper() == "HEAD":
            return False
        if isinstance(status, bool) or not isinstance(status, int):
            return False
        if not (200 <= status < 300 or 400 <= status < 600) or status in _NO_RENDER_2XX:
            return False
        content_types: list[str] = []
        for name, value in headers:
            key = name.strip().lower()
            if key == "content-type":
                content_types.append(value.split(";", 1)[0].strip().lower())
            elif key == "content-encoding":
                for coding in value.split(","):
                    if coding.strip().lower() not in ("", "identity"):
                        return False
            elif key == "content-disposition":
                if value.split(";", 1)[0].strip().lower() == "attachment":
                    return False
            elif key == "content-range":
                return False
        # Exactly one Content-Type: none means unknown, several mean ambiguous.
        return len(content_types) == 1 and content_types[0] in _HTML_TYPES
    except Exception:  # malformed input from the host app: never break the response
        return False


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
