"""The ASGI adapter: pure ASGI middleware (no BaseHTTPMiddleware), for Starlette, FastAPI and
any ASGI app.

It holds ``http.response.start`` back only for pages that get the snippet, until the body
bytes up to ``</head>`` are in hand; everything else (websockets, non-HTML, compressed bodies,
``http.response.pathsend``) goes through as the app sent it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, Protocol

from pixelmirror._memo import Memo
from pixelmirror.web.adapter import Adapter
from pixelmirror.web.adapter import Served as ServesPages
from pixelmirror.web.pages import MAX_BODY, PageRequest, RequestFacts
from pixelmirror.web.response import Headers
from pixelmirror.web.scope import Scope, request_facts

logger = logging.getLogger("pixelmirror.web")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Served(ServesPages, Protocol):
    """The pages' owner, and the sender to start at lifespan startup and flush at shutdown."""

    def start(self) -> None: ...

    def flush(self, timeout: float = ...) -> bool: ...


class PixelMirrorMiddleware(Adapter[ASGIApp, Served]):
    """ASGI middleware: ``app = mirror.asgi(app)``, or in Starlette and FastAPI
    ``app.add_middleware(PixelMirrorMiddleware, mirror=mirror)``.

    On lifespan shutdown it flushes the outbox for up to ``PIXELMIRROR_SHUTDOWN_TIMEOUT``
    seconds, then passes the shutdown on to the app, whether or not the outbox answered.
    Requests never touch the outbox on the event loop: their events go to the handoff.
    Place it inside any compression middleware: it only touches uncompressed HTML.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            pages = self.pages
            facts = self._facts(request_facts, scope, scope.get("app"))
            if facts is not None:
                if pages.is_beacon(facts):
                    await self._beacon(facts, receive, send)
                    return
                request = pages.start(facts)
                if request is not None:
                    try:
                        with request:
                            await self.app(scope, receive, _Responder(request, send).send)
                    finally:
                        request.done()
                    return
        elif scope["type"] == "lifespan":
            receive = self._watch_lifespan(receive)
        await self.app(scope, receive, send)

    async def _beacon(self, facts: RequestFacts, receive: Receive, send: Send) -> None:
        body = b""
        while len(body) <= MAX_BODY:  # one byte past the limit is enough to refuse it
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = self.pages.beacon(facts, body)
        start = {"type": "http.response.start", "status": answer.status}
        await send({**start, "headers": _encode(answer.headers)})
        await send({"type": "http.response.body", "body": answer.body})

    def _watch_lifespan(self, receive: Receive) -> Receive:
        async def receive_lifespan() -> Message:
            message = await receive()
            # Whatever fails here (an unreachable outbox), the app hears of its lifespan:
            # its own startup and shutdown hooks must run.
            try:
                if message["type"] == "lifespan.startup":
                    self.mirror.start()
                elif message["type"] == "lifespan.shutdown":
                    # The server has stopped taking requests: a short blocking flush is fine.
                    self.mirror.flush(self.pages.config.shutdown_timeout)
            except Exception:
                logger.exception("%s handling failed", message["type"])
            return message

        return receive_lifespan


class _Responder:
    """One request's ``send``, fed through its :class:`PageRequest`."""

    __slots__ = ("request", "server_send", "start")

    def __init__(self, request: PageRequest, send: Send) -> None:
        self.request = request
        self.server_send = send
        self.start: Message | None = None

    async def send(self, message: Message) -> None:
        kind, request = message["type"], self.request
        if kind == "http.response.start":
            headers = _decode(message.get("headers", ()))
            start = request.respond(int(message["status"]), headers)
            if start is None:
                self.start = message
            elif start is headers:
                await self.server_send(message)
            else:
                await self.server_send({**message, "headers": _encode(start)})
        elif not request.holding:
            await self.server_send(message)
        elif kind == "http.response.body":
            more = message.get("more_body", False)
            released, body = request.feed(message.get("body", b""), more=more)
            if released is not None:
                await self.server_send(self._started(released))
                await self.server_send({**message, "body": body})
        else:  # pathsend, trailers, ...: the page goes as the app made it
            await self.server_send(self._started(request.release()[0]))
            await self.server_send(message)

    def _started(self, headers: Headers) -> Message:
        """The held ``http.response.start`` with these headers."""
        assert self.start is not None
        return {**self.start, "headers": _encode(headers)}


def _decode(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    if type(raw) is not list and type(raw) is not tuple:
        raw = list(raw)  # any iterable, read twice below
    try:  # the same few names on every response: each decoded once
        return [(_DECODED[n], v.decode("latin-1")) for n, v in raw]
    except TypeError:  # a name that cannot be kept (a bytearray): decoded each time
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]


def _encode(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    # ... and encoded once, in lower case
    return [(_ENCODED[n], v.encode("latin-1")) for n, v in headers]


#: Header names as the app sends them and as they go out.
_DECODED: Memo[bytes, str] = Memo(lambda raw: raw.decode("latin-1"))
_ENCODED: Memo[str, bytes] = Memo(lambda name: name.lower().encode("latin-1"))


__all__ = ["ASGIApp", "Message", "PixelMirrorMiddleware", "Receive", "Scope", "Send"]
