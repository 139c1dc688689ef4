"""The ASGI adapter: pure ASGI middleware (no BaseHTTPMiddleware), for Starlette, FastAPI and
any ASGI app.

It holds ``http.response.start`` back only for pages that get the snippet, until the body
bytes up to ``</head>`` are in hand; everything else (websockets, non-HTML, compressed bodies,
``http.response.pathsend``) goes through as the app sent it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from pixelmirror.beacon import MAX_BODY
from pixelmirror.facts import RequestFacts
from pixelmirror.mirror import BeaconAnswer, HeldPage, PixelMirror
from pixelmirror.tracking import Visit, activate, deactivate

logger = logging.getLogger("pixelmirror")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_facts(scope: Scope) -> RequestFacts:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    scheme = scope.get("scheme", "http")
    host = headers.get("host") or _server_host(scope, scheme)
    raw_path = scope.get("raw_path")
    path = (
        raw_path.decode("latin-1")
        if raw_path
        else scope.get("root_path", "") + scope.get("path", "/")
    )
    client = scope.get("client")
    return RequestFacts(
        method=scope.get("method", "GET"),
        scheme=scheme,
        host=host,
        path=path,
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        peer=client[0] if client else None,
    )


def _server_host(scope: Scope, scheme: str) -> str:
    server = scope.get("server")
    if not server:
        return "localhost"
    name, port = server[0], server[1]
    default = 443 if scheme in ("https", "wss") else 80
    return name if port in (None, default) else f"{name}:{port}"


class PixelMirrorMiddleware:
    """ASGI middleware: ``app = mirror.asgi(app)``, or in Starlette and FastAPI
    ``app.add_middleware(PixelMirrorMiddleware, mirror=mirror)``.

    Without ``mirror`` it builds one from the ``PIXELMIRROR_*`` variables. On lifespan
    shutdown it flushes the outbox for up to ``PIXELMIRROR_SHUTDOWN_TIMEOUT`` seconds, then
    passes the shutdown on to the app, whether or not the outbox answered. Requests never
    touch the outbox on the event loop: their events go to the handoff. Place it
    inside any compression middleware: it only touches uncompressed HTML.
    """

    def __init__(self, app: ASGIApp, mirror: PixelMirror | None = None) -> None:
        self.app = app
        self.mirror = mirror if mirror is not None else PixelMirror()
        self.mirror.prepare_web()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                facts = request_facts(scope)
                if self.mirror.is_beacon(facts):
                    await self._beacon(facts, receive, send)
                    return
                visit = self.mirror.begin(facts)
            except Exception:
                logger.exception("pixelmirror: could not read the request; passing it through")
                visit = None
            if visit is not None:
                await _Responder(self.app, self.mirror, visit, send)(scope, receive)
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
        try:
            answer = self.mirror.answer_beacon(facts, body)
        except Exception:
            logger.exception("pixelmirror: the beacon failed")
            answer = BeaconAnswer.failed()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": _encode(answer.headers),
            }
        )
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
                    self.mirror.flush(self.mirror.config.shutdown_timeout)
            except Exception:
                logger.exception("pixelmirror: %s handling failed", message["type"])
            return message

        return receive_lifespan


class _Responder:
    """One request's state: the plan, and the page held until the snippet has its place."""

    def __init__(self, app: ASGIApp, mirror: PixelMirror, visit: Visit, send: Send) -> None:
        self.app = app
        self.mirror = mirror
        self.visit = visit
        self.server_send = send
        self.status = 500
        self.start: Message | None = None
        self.page: HeldPage | None = None

    async def __call__(self, scope: Scope, receive: Receive) -> None:
        token = activate(self.visit)
        try:
            await self.app(scope, receive, self.send)
        finally:
            deactivate(token)
            try:
                self.mirror.finish(self.visit, self.status)
            except Exception:
                logger.exception("pixelmirror: mirroring the request's events failed")

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif self.page is None:
            await self.server_send(message)
        elif kind == "http.response.body":
            await self._body(message)
        else:  # pathsend, trailers, ...: the page goes as the app made it
            await self._release(self.page.give_up()[0])
            await self.server_send(message)

    async def _start(self, message: Message) -> None:
        self.status = int(message["status"])
        headers = _decode(message.get("headers", ()))
        try:
            plan = self.mirror.plan(self.visit, self.visit.facts.method, self.status, headers)
        except Exception:
            logger.exception("pixelmirror: planning the response failed; passing it through")
            plan = None
        if plan is None:
            await self.server_send(message)
        elif plan.snippet is None:
            await self.server_send({**message, "headers": _encode(plan.apply(headers))})
        else:
            self.start = message
            self.page = HeldPage(plan, headers, self.mirror.config.max_buffer)

    async def _body(self, message: Message) -> None:
        assert self.page is not None
        page = self.page
        try:
            decided = page.feed(message.get("body", b""), more=message.get("more_body", False))
        except Exception:
            logger.exception("pixelmirror: injection failed; passing the page through")
            decided = page.give_up()
        if decided is not None:
            headers, body = decided
            self.visit.injected = page.injected
            await self._release(headers)
            await self.server_send({**message, "body": body})

    async def _release(self, headers: list[tuple[str, str]]) -> None:
        assert self.start is not None
        self.page = None
        await self.server_send({**self.start, "headers": _encode(headers)})


def _decode(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]
