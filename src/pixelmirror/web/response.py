"""What a page's response gets, and the machinery both adapters share to give it.

:class:`Plan` is the decision (a snippet, cookies, headers), :class:`HeldPage` holds a page's
body until the snippet has its place and splices it in, :class:`BeaconAnswer` is the beacon
endpoint's response. Pure: no framework, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pixelmirror.events import BrowserEvent
from pixelmirror.facts import RequestFacts
from pixelmirror.inject import InsertionScanner
from pixelmirror.web.headers import csp_nonce, rewrite_headers

Headers = list[tuple[str, str]]

#: Response header that tells a front end which events to fire with which eventID.
EVENTS_HEADER = "X-PixelMirror-Events"


@dataclass(slots=True)
class Plan:
    """What the adapter does to one response: decided by ``Pages.plan``.

    With a ``snippet``, the adapter holds the response in a :class:`HeldPage` until the
    snippet has its place; a page without one gets the ``fallback`` plan instead. Without a
    snippet, :meth:`apply` gives the response's headers. Made for every page and never
    changed: slots and no frozen ``__setattr__``, cheaper to make.
    """

    snippet: bytes | None = None
    cookies: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    #: The response carries this visitor's own ids: keep it out of shared caches.
    private: bool = True
    #: For a snippet that finds no place: announce the events another way.
    fallback: Plan | None = None
    #: What the snippet fires in the browser, for the debug log once it is in the page: the
    #: page's PageView (its eventID), then these events.
    page_view: str | None = None
    fired: tuple[BrowserEvent, ...] = ()

    def apply(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers of a response this plan adds cookies or events to, body unchanged."""
        if not self.cookies and not self.headers:
            return list(headers)
        fixed = rewrite_headers(
            headers, added_length=0, set_cookies=self.cookies, private=self.private
        )
        return [*fixed, *self.headers]


class HeldPage:
    """One page's body on its way out, held until the snippet has its place.

    Both adapters feed it chunks; :meth:`feed` answers None while it must hold on, then the
    headers and the bytes to send. The page goes out untouched (with the plan's fallback)
    if it has no ``</head>`` or ``<body>``, already carries the snippet, or outgrows
    ``max_buffer``. Each byte is scanned once, whatever the chunks; the chunks are kept as
    they came and joined once, with the snippet, on the way out.
    """

    __slots__ = ("chunks", "headers", "injected", "max_buffer", "plan", "scanner", "size")

    def __init__(self, plan: Plan, headers: Sequence[tuple[str, str]], max_buffer: int) -> None:
        assert plan.snippet is not None
        self.plan = plan
        self.headers = headers
        self.max_buffer = max_buffer
        self.chunks: list[bytes] = []
        self.size = 0
        self.scanner = InsertionScanner()
        self.injected = False

    def feed(self, chunk: bytes, *, more: bool) -> tuple[list[tuple[str, str]], bytes] | None:
        if chunk:
            if type(chunk) is not bytes:  # a buffer the app may reuse: keep a copy
                chunk = bytes(chunk)
            self.chunks.append(chunk)
            self.size += len(chunk)
        scanner = self.scanner
        point = scanner.feed(chunk)
        if not more and point is None:
            point = scanner.end()
        if point is not None:
            self.injected = True
            plan = self.plan
            snippet = plan.snippet
            assert snippet is not None
            headers = rewrite_headers(
                self.headers,
                added_length=len(snippet),
                set_cookies=plan.cookies,
                private=plan.private,
            )
            return headers, self._spliced(point, snippet)
        if more and not scanner.done and self.size <= self.max_buffer:
            return None
        return self.give_up()

    def _spliced(self, point: int, snippet: bytes) -> bytes:
        """The held bytes with the snippet at ``point``, in one join (views, no copies)."""
        chunks = self.chunks
        if len(chunks) == 1:  # the whole page at once, as most frameworks send it
            view = memoryview(chunks[0])
            return b"".join((view[:point], snippet, view[point:]))
        start = 0
        for index, chunk in enumerate(chunks):
            if start + len(chunk) >= point:
                view = memoryview(chunk)
                at = point - start
                return b"".join(
                    (*chunks[:index], view[:at], snippet, view[at:], *chunks[index + 1 :])
                )
            start += len(chunk)
        raise AssertionError("the insertion point lies in the held bytes")

    def give_up(self) -> tuple[list[tuple[str, str]], bytes]:
        """The page as the app made it, with the plan's fallback headers."""
        fallback = self.plan.fallback
        headers = fallback.apply(self.headers) if fallback else list(self.headers)
        return headers, b"".join(self.chunks)


@dataclass(frozen=True)
class BeaconAnswer:
    """The beacon endpoint's response, for the adapter to send as it is."""

    status: int
    body: bytes
    content_type: str = "application/json"
    cookies: tuple[str, ...] = ()

    @classmethod
    def failed(cls) -> BeaconAnswer:
        """A beacon pixelmirror could not answer: the page fires without eventID."""
        return cls(500, b"pixelmirror could not answer", content_type="text/plain")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            *(("Set-Cookie", cookie) for cookie in self.cookies),
        ]


class NonceSource(Protocol):
    def __call__(self, facts: RequestFacts, headers: Sequence[tuple[str, str]]) -> str | None: ...


def nonce_from_csp(facts: RequestFacts, headers: Sequence[tuple[str, str]]) -> str | None:
    """The default nonce source: the ``'nonce-...'`` of the response's own CSP header.

    Whatever framework made the nonce, it is in the policy it sends; reusing it lets the
    injected script run under that policy.
    """
    return csp_nonce(headers)


def server_host(name: str, port: object, scheme: str) -> str:
    """The ``Host`` a request without one stands for: the server's name, and its port unless
    it is the scheme's default."""
    port_text = "" if port is None else str(port)
    default = "443" if scheme in ("https", "wss") else "80"
    return name if not port_text or port_text == default else f"{name}:{port_text}"
