"""The WSGI adapter: translate between WSGI and :class:`~pixelmirror.mirror.PixelMirror`.

No business rules live here. The adapter holds back ``start_response`` only for pages that
get the snippet, until the bytes up to ``</head>`` are in hand; everything else goes through
as the app made it, and the app's iterable is always closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import quote

from pixelmirror.beacon import MAX_BODY
from pixelmirror.facts import RequestFacts
from pixelmirror.mirror import BeaconAnswer, HeldPage, Plan
from pixelmirror.tracking import Visit, activate, deactivate

if TYPE_CHECKING:
    # typeshed's WSGI types: the ones Flask, Werkzeug and WSGI servers are checked with.
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from pixelmirror.mirror import PixelMirror

logger = logging.getLogger("pixelmirror")

Headers = list[tuple[str, str]]


class EnvironHeaders(Mapping[str, str]):
    """Lower-case header names over a WSGI environ, read lazily: most go unread."""

    __slots__ = ("_environ",)

    def __init__(self, environ: WSGIEnvironment) -> None:
        self._environ = environ

    @staticmethod
    def _key(name: str) -> str:
        key = name.upper().replace("-", "_")
        return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"

    def __getitem__(self, name: str) -> str:
        value = self._environ[self._key(name)]
        if not isinstance(value, str):
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").lower()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def request_facts(environ: WSGIEnvironment) -> RequestFacts:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or _server_host(environ, scheme)
    # PEP 3333 strings are bytes decoded as latin-1: re-encode to quote the raw path.
    raw_path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
    return RequestFacts(
        method=environ.get("REQUEST_METHOD", "GET"),
        scheme=scheme,
        host=host,
        path=quote(raw_path, safe="/:@!$&'()*+,;=%~") or "/",
        query=environ.get("QUERY_STRING", ""),
        headers=EnvironHeaders(environ),
        peer=environ.get("REMOTE_ADDR"),
    )


def _server_host(environ: WSGIEnvironment, scheme: str) -> str:
    name, port = environ.get("SERVER_NAME", "localhost"), str(environ.get("SERVER_PORT", ""))
    default = "443" if scheme == "https" else "80"
    return name if not port or port == default else f"{name}:{port}"


class PixelMirrorWSGI:
    """WSGI middleware: ``app.wsgi_app = mirror.wsgi(app.wsgi_app)``.

    Place it inside any compression middleware: it only touches uncompressed HTML.
    """

    def __init__(self, app: WSGIApplication, mirror: PixelMirror) -> None:
        self.app = app
        self.mirror = mirror
        mirror.prepare_web()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            facts = request_facts(environ)
            if self.mirror.is_beacon(facts):
                return self._beacon(facts, environ, start_response)
            visit = self.mirror.begin(facts)
        except Exception:
            logger.exception("pixelmirror: could not read the request; passing it through")
            visit = None
        if visit is None:
            return self.app(environ, start_response)
        return _Responder(self.app, self.mirror, visit, start_response).run(environ)

    def _beacon(
        self, facts: RequestFacts, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # One byte past the limit is enough to refuse an oversized body.
        try:
            body = environ["wsgi.input"].read(min(max(length, 0), MAX_BODY + 1)) if length else b""
            answer = self.mirror.answer_beacon(facts, body)
        except Exception:
            logger.exception("pixelmirror: the beacon failed")
            answer = BeaconAnswer.failed()
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", answer.headers)
        return [answer.body]


class _Responder:
    """One request's state: the plan, and the page held until the snippet has its place."""

    def __init__(
        self,
        app: WSGIApplication,
        mirror: PixelMirror,
        visit: Visit,
        start_response: StartResponse,
    ) -> None:
        self.app = app
        self.mirror = mirror
        self.visit = visit
        self.server_start_response = start_response
        self.status: int | None = None
        self.status_line = ""
        self.page: HeldPage | None = None
        self.written = bytearray()  # legacy write() calls while the page is held
        self.finished = False

    def run(self, environ: WSGIEnvironment) -> Iterable[bytes]:
        token = activate(self.visit)
        try:
            result = self.app(environ, self.start_response)
        finally:
            deactivate(token)
        if self.page is None and self.status is not None:
            # Started and not held for injection: hand back the app's own iterable (a
            # wsgi.file_wrapper keeps its sendfile path) and mirror now.
            self.finish()
            return result
        return _Body(result, self)

    def start_response(
        self, status: str, headers: Headers, exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        self.status, self.status_line = _status_code(status), status
        if exc_info is not None:
            self.page = None  # an error page replaces the held one
            return self.server_start_response(status, headers, exc_info)
        plan = self._plan(headers)
        if plan is None:
            return self.server_start_response(status, headers)
        if plan.snippet is None:
            return self.server_start_response(status, plan.apply(headers))
        self.page = HeldPage(plan, headers, self.mirror.config.max_buffer)
        return self.written.extend

    def _plan(self, headers: Headers) -> Plan | None:
        try:
            return self.mirror.plan(self.visit, self.visit.facts.method, self.status or 0, headers)
        except Exception:
            logger.exception("pixelmirror: planning the response failed; passing it through")
            return None

    def feed(self, chunk: bytes, *, more: bool = True) -> bytes:
        """Bytes to send for this chunk of the app's body (empty while holding back).

        While holding, nothing is yielded: servers refuse even an empty body before the
        headers, and the headers wait for the splice.
        """
        page = self.page
        if page is None:
            return chunk
        if self.written:
            chunk, self.written = bytes(self.written) + chunk, bytearray()
        try:
            decided = page.feed(chunk, more=more)
        except Exception:
            logger.exception("pixelmirror: injection failed; passing the page through")
            decided = page.give_up()
        if decided is None:
            return b""
        headers, body = decided
        self.page = None
        self.visit.injected = page.injected
        self.server_start_response(self.status_line, headers)
        return body

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.mirror.finish(self.visit, self.status or 500)
        except Exception:
            logger.exception("pixelmirror: mirroring the request's events failed")


class _Body:
    """The app's iterable, fed through the responder; ``close()`` always reaches the app's."""

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

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.responder.finish()


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except ValueError:
        return 500


__all__ = ["PixelMirrorWSGI", "request_facts"]
