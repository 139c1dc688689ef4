"""The WSGI adapter: translate between WSGI and :class:`~pixelmirror.web.pages.Pages`.

No business rules live here. The adapter holds back ``start_response`` only for pages that
get the snippet, until the bytes up to ``</head>`` are in hand; everything else goes through
as the app made it, and the app's iterable is always closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pixelmirror.web.adapter import Adapter, Served
from pixelmirror.web.environ import request_facts
from pixelmirror.web.pages import MAX_BODY, PageRequest, RequestFacts
from pixelmirror.web.response import BeaconAnswer, Headers

if TYPE_CHECKING:
    # typeshed's WSGI types: the ones Flask, Werkzeug and WSGI servers are checked with.
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger("pixelmirror.web")


class PixelMirrorWSGI(Adapter["WSGIApplication", Served]):
    """WSGI middleware: ``app.wsgi_app = mirror.wsgi(app.wsgi_app)``.

    Place it inside any compression middleware: it only touches uncompressed HTML.
    """

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        pages = self.pages
        facts = self._facts(request_facts, environ)
        if facts is None:
            return self.app(environ, start_response)
        if pages.is_beacon(facts):
            return self._beacon(facts, environ, start_response)
        request = pages.start(facts)
        if request is None:
            return self.app(environ, start_response)
        return _Responder(request, start_response).run(self.app, environ)

    def _beacon(
        self, facts: RequestFacts, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            length = max(int(environ.get("CONTENT_LENGTH") or 0), 0)
        except ValueError:
            length = 0
        # One byte past the limit is enough to refuse an oversized body.
        try:
            body = environ["wsgi.input"].read(min(length, MAX_BODY + 1)) if length else b""
        except Exception:
            logger.exception("the beacon failed")
            answer = BeaconAnswer.failed()
        else:
            answer = self.pages.beacon(facts, body)
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", answer.headers)
        return [answer.body]


class _Responder:
    """One request's ``start_response`` and body, fed through its :class:`PageRequest`."""

    __slots__ = ("request", "server_start_response", "status_line", "written")

    def __init__(self, request: PageRequest, start_response: StartResponse) -> None:
        self.request = request
        self.server_start_response = start_response
        self.status_line = ""
        self.written = bytearray()  # legacy write() calls while the page is held

    def run(self, app: WSGIApplication, environ: WSGIEnvironment) -> Iterable[bytes]:
        request = self.request
        with request:
            result = app(environ, self.start_response)
        if not request.holding and request.status is not None:
            # Started and not held for injection: hand back the app's own iterable (a
            # wsgi.file_wrapper keeps its sendfile path) and mirror now.
            request.done()
            return result
        return _Body(result, self)

    def start_response(
        self, status: str, headers: Headers, exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        self.status_line = status
        if exc_info is not None:
            self.request.replaced(_status_code(status))
            return self.server_start_response(status, headers, exc_info)
        start = self.request.respond(_status_code(status), headers)
        if start is None:
            return self.written.extend
        return self.server_start_response(status, start)

    def feed(self, chunk: bytes, *, more: bool = True) -> bytes:
        """Bytes to send for this chunk of the app's body (empty while holding back).

        While holding, nothing is yielded: servers refuse even an empty body before the
        headers, and the headers wait for the splice.
        """
        if self.written and self.request.holding:
            chunk, self.written = bytes(self.written) + chunk, bytearray()
        start, body = self.request.feed(chunk, more=more)
        if start is not None:
            self.server_start_response(self.status_line, start)
        return body


class _Body:
    """The app's iterable, fed through the responder; ``close()`` always reaches the app's.
    The request's events are mirrored once the body is exhausted or closed."""

    __slots__ = ("responder", "result")

    def __init__(self, result: Iterable[bytes], responder: _Responder) -> None:
        self.result = result
        self.responder = responder

    def __iter__(self) -> Iterator[bytes]:
        responder = self.responder
        for chunk in self.result:
            out = responder.feed(chunk)
            if out:
                yield out
        tail = responder.feed(b"", more=False)
        if tail:
            yield tail
        # The body is all out: mirror now rather than at close(), which a test client may
        # never call (done() runs once, whichever comes first).
        responder.request.done()

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.responder.request.done()


def flask_settings(app: Any) -> dict[str, object]:
    """A Flask app's ``PIXELMIRROR_*`` config keys."""
    return {name: value for name, value in app.config.items() if name.startswith("PIXELMIRROR_")}


def init_flask(app: Any, mirror: Served) -> None:
    """Flask: wrap ``app.wsgi_app`` and register as ``app.extensions["pixelmirror"]``."""
    app.wsgi_app = PixelMirrorWSGI(app.wsgi_app, mirror)
    app.extensions["pixelmirror"] = mirror


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except ValueError:
        return 500


__all__ = ["PixelMirrorWSGI", "flask_settings", "init_flask"]
