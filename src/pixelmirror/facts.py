"""What the middleware knows about a request, independent of WSGI or ASGI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
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

    @property
    def url(self) -> str:
        """The URL as the server saw it (see ``Identity.page_url`` for the browser's)."""
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.host}{self.path}{query}"

    @cached_property
    def cookies(self) -> Mapping[str, str]:
        """Cookies of the request; the first of two same-named cookies wins, as browsers send
        the most specific first. Malformed pairs are skipped."""
        return {name: values[0] for name, values in self._cookie_jar.items()}

    def cookie_values(self, name: str) -> list[str]:
        """Every value sent for cookie ``name``, in order: a sibling subdomain's cookie of
        the same name comes along with ours, and it may come first."""
        return list(self._cookie_jar.get(name, ()))

    @cached_property
    def _cookie_jar(self) -> dict[str, list[str]]:
        """Each cookie name's values in order: the header parsed once per request."""
        jar: dict[str, list[str]] = {}
        for pair in self.headers.get("cookie", "").split(";"):
            name, sep, value = pair.partition("=")
            name = name.strip()
            if sep and name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values = jar.get(name)
                if values is None:
                    jar[name] = [value]
                else:
                    values.append(value)
        return jar
