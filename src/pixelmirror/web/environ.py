"""A WSGI environ read as :class:`~pixelmirror.facts.RequestFacts`: its URL and its headers
(which Django's ``request.META`` holds too)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pixelmirror._memo import Memo
from pixelmirror.facts import RequestFacts
from pixelmirror.web.response import server_host

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


class EnvironHeaders(Mapping[str, str]):
    """Lower-case header names over a WSGI environ, read lazily: most go unread."""

    __slots__ = ("_environ",)

    def __init__(self, environ: WSGIEnvironment) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        value = self._environ[_KEYS[name]]
        if not isinstance(value, str):
            raise KeyError(name)
        return value

    # Mapping's get and ``in`` go through __getitem__ and raise KeyError for each header
    # the request lacks: most of those asked for (proxy headers, Sec-GPC, ...).
    def get(self, name: str, default: Any = None) -> Any:
        value = self._environ.get(_KEYS[name])
        return value if isinstance(value, str) else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and isinstance(self._environ.get(_KEYS[name]), str)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").lower()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


#: Header names and their environ keys: the same few on every request, each made once.
_KEYS: Memo[str, str] = Memo(_key)


def request_facts(environ: WSGIEnvironment) -> RequestFacts:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or server_host(
        environ.get("SERVER_NAME", "localhost"), environ.get("SERVER_PORT"), scheme
    )
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if _UNQUOTED.search(path):  # what quote() would change: PEP 3333 strings are
        path = quote(path.encode("latin-1"), safe=_PATH_SAFE)  # bytes decoded as latin-1
    return RequestFacts(
        environ.get("REQUEST_METHOD", "GET"),
        scheme,
        host,
        path or "/",
        environ.get("QUERY_STRING", ""),
        EnvironHeaders(environ),
        environ.get("REMOTE_ADDR"),
    )


_PATH_SAFE = "/:@!$&'()*+,;=%~"
#: A character quote(path, safe=_PATH_SAFE) changes: all but ASCII letters, digits, "_.-~"
#: and the safe ones. A search finding none makes no match object, unlike a full match.
_UNQUOTED = re.compile(r"[^A-Za-z0-9_.\-~/:@!$&'()*+,;=%]")


__all__ = ["EnvironHeaders", "request_facts"]
