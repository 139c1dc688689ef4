"""An ASGI ``http`` scope read as :class:`~pixelmirror.facts.RequestFacts`."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from pixelmirror._memo import Memo
from pixelmirror.facts import RequestFacts
from pixelmirror.web.response import server_host

Scope = MutableMapping[str, Any]


def request_facts(scope: Scope) -> RequestFacts:
    headers: dict[str, str] = {}
    names = _NAMES
    for raw_name, raw_value in scope.get("headers", ()):
        name = names[raw_name]
        if name in headers:
            headers[name] += ("; " if name == "cookie" else ", ") + raw_value.decode("latin-1")
        else:
            headers[name] = raw_value.decode("latin-1")
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    host = headers.get("host") or (
        server_host(server[0], server[1], scheme) if server else "localhost"
    )
    raw_path = scope.get("raw_path")
    path = (
        raw_path.decode("latin-1")
        if raw_path
        else scope.get("root_path", "") + scope.get("path", "/")
    )
    client = scope.get("client")
    return RequestFacts(
        scope.get("method", "GET"),
        scheme,
        host,
        path,
        scope.get("query_string", b"").decode("latin-1"),
        headers,
        client[0] if client else None,
    )


#: Header names as sent and as read: the same few on every request, decoded once.
_NAMES: Memo[bytes, str] = Memo(lambda raw: raw.decode("latin-1").lower())


__all__ = ["Scope", "request_facts"]
