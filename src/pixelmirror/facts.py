"""What the middleware knows about a request, independent of WSGI or ASGI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class _computed_once(Generic[T]):
    """``functools.cached_property`` without the lock it takes on every first access before
    Python 3.12: the value is computed from the request's immutable facts, so two threads
    that race compute equal values, and either may stay."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self._compute = compute
        self._name = compute.__name__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _computed_once[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object, owner: type | None = None) -> T | _computed_once[T]:
        if instance is None:
            return self
        # Stored in the instance's __dict__, which later lookups find before this
        # non-data descriptor.
        value = instance.__dict__[self._name] = self._compute(instance)
        return value


@dataclass(frozen=True, init=False)
class RequestFacts:
    """A request as the adapters hand it to :class:`~pixelmirror.mirror.PixelMirror`.

    ``headers`` has lower-case names; repeated headers are joined with ``", "`` (cookies
    with ``"; "``). ``peer`` is the socket peer's IP address, when the server gives one.
    """

    method: str
    scheme: str
    #: The ``Host`` header (or the server name and port when it is missing).
    host: str
    #: The path as sent, percent-encoded.
    path: str
    #: The query string as sent, without ``?``.
    query: str
    headers: Mapping[str, str]
    peer: str | None = None

    def __init__(
        self,
        method: str,
        scheme: str,
        host: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        peer: str | None = None,
    ) -> None:
        # Written straight into __dict__: a frozen dataclass's own __init__ calls
        # object.__setattr__ once per field, and every request makes one of these.
        facts = self.__dict__
        facts["method"] = method
        facts["scheme"] = scheme
        facts["host"] = host
        facts["path"] = path
        facts["query"] = query
        facts["headers"] = headers
        facts["peer"] = peer

    @property
    def url(self) -> str:
        """The URL as the server saw it (see ``Identity.page_url`` for the browser's)."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.host}{self.path}{query}"

    @property
    def cookies(self) -> Mapping[str, str]:
        """Cookies of the request; the first of two same-named cookies wins, as browsers send
        the most specific first. Malformed pairs are skipped. Read-only: it is shared with
        the other requests that send the same header."""
        return self._cookie_jar[0]

    def cookie_values(self, name: str) -> list[str]:
        """Every value sent for cookie ``name``, in order: a sibling subdomain's cookie of
        the same name comes along with ours, and it may come first."""
        if name not in self.headers.get("cookie", ""):
            return []  # a new visitor's page: no parse to find nothing
        first, repeated = self._cookie_jar
        values = repeated.get(name)
        if values is not None:
            return list(values)
        value = first.get(name)
        return [] if value is None else [value]

    @_computed_once
    def _cookie_jar(self) -> tuple[Mapping[str, str], dict[str, list[str]]]:
        """Each cookie name's first value, and every value of the names sent more than once:
        the header parsed once per request, and once for all the requests sending it."""
        header = self.headers.get("cookie", "")
        jar = _JARS.get(header)
        if jar is None:
            first, repeated = parse_cookies(header)
            jar = MappingProxyType(first), repeated
            if len(header) <= _MAX_KEPT_HEADER:
                if len(_JARS) >= _JARS_KEPT:
                    _JARS.clear()
                _JARS[header] = jar
        return jar


def parse_cookies(header: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A ``Cookie`` header's cookies: each name's first value, and every value of the names
    sent more than once. Malformed pairs are skipped; a value in double quotes loses them."""
    first: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name in first:
            values = repeated.get(name)
            if values is None:
                repeated[name] = [first[name], value]
            else:
                values.append(value)
        else:
            first[name] = value
    return first, repeated


# A browser sends the same Cookie header page after page: its parse is kept, shared by the
# requests that send it (so never changed), and bounded (the header is the client's to
# choose, and one far longer than usual is parsed each time).
_JARS_KEPT = 512
_MAX_KEPT_HEADER = 4096
_JARS: dict[str, tuple[Mapping[str, str], dict[str, list[str]]]] = {}
