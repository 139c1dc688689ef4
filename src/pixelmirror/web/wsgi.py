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

from pixelmirror._memo import Memo
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
        responder = _Responder(request, start_response)
        app: WSGIApplication = self.app
        with request:
            result = app(environ, responder.start_response)
        if request.holding or request.status is None:
            responder.result = result
            return responder
        # Started and not held for injection: hand back the app's own iterable (a
        # wsgi.file_wrapper keeps its sendfile path) and mirror now.
        request.done()
        return result

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
    """One request's ``start_response`` and, for a page held for the snippet, its body: the
    app's iterable fed through the :class:`PageRequest`. ``close()`` always reaches the
    app's; the request's events are mirrored once the body is exhausted or closed."""

    __slots__ = ("request", "result", "server_start_response", "status_line", "written")

    def __init__(self, request: PageRequest, start_response: StartResponse) -> None:
        self.request = request
        self.server_start_response = start_response
        self.status_line = ""
        self.written: bytearray | None = None  # legacy write() calls while the page is held
        self.result: Iterable[bytes] = ()  # the app's body, once it is held

    def start_response(
        self, status: str, headers: Headers, exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        self.status_line = status
        code = _STATUS_CODES[status]
        if exc_info is not None:
            self.request.replaced(code)
            return self.server_start_response(status, headers, exc_info)
        start = self.request.respond(code, headers)
        if start is None:
            written = self.written = bytearray()
            return written.extend
        return self.server_start_response(status, start)

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.result)
        for chunk in chunks:
            released, body = self._feed(chunk, more=True)
            if body:
                yield body
            if released:
                # Let go: the rest of the body goes as the app made it, past the request.
                for rest in chunks:
                    if rest:
                        yield rest
                break
        else:
            _, tail = self._feed(b"", more=False)
            if tail:
                yield tail
        # The body is all out: mirror now rather than at close(), which a test client may
        # never call (done() runs once, whichever comes first).
        self.request.done()

    def _feed(self, chunk: bytes, *, more: bool) -> tuple[bool, bytes]:
        """Whether the request let go of the start with this chunk, and the bytes to send
        for it (empty while holding).

        While holding, nothing is yielded: servers refuse even an empty body before the
        headers, and the headers wait for the splice.
        """
        request = self.request
        if self.written and request.holding:
            chunk, self.written = bytes(self.written) + chunk, None
        start, body = request.feed(chunk, more=more)
        if start is None:
            return False, body
        self.server_start_response(self.status_line, start)
        return True, body

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.request.done()


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


#: Status lines and their codes: the same few on every response, each read once.
_STATUS_CODES: Memo[str, int] = Memo(_status_code, limit=64)


__all__ = ["PixelMirrorWSGI", "flask_settings", "init_flask"]
