"""URLs as they may be shown: in logs, errors and ``repr``."""

from __future__ import annotations


def masked_url(url: str) -> str:
    """``url`` fit for logs, errors and ``repr``: a password in it replaced by ``***``.

    Parsed by hand rather than with ``urlsplit``, which raises on some malformed URLs: the
    very ones that end up in an error message.
    """
    scheme, slashes, rest = url.partition("//")
    if not slashes:
        scheme, rest = "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not (at and colon):
        return url
    return f"{scheme}{slashes}{user}:***@{host}{rest[end:]}"
