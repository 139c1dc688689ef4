"""The Django adapter: translate between Django and :class:`~pixelmirror.web.pages.Pages`.

No business rules live here. A page's ``HttpResponse`` gets the snippet spliced into its
content; a ``StreamingHttpResponse`` is read here until the snippet has its place, then
streams on (under WSGI an async iterator, which Django itself must gather, goes as it is); a
``FileResponse`` goes as it is. The beacon is answered before any view (and so before CSRF's
check).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from http.cookies import Morsel
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.exceptions import DisallowedHost
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.utils.encoding import escape_uri_path

from pixelmirror.django.conf import DjangoFacts, get_mirror, identifies
from pixelmirror.web.environ import EnvironHeaders
from pixelmirror.web.pages import MAX_BODY, PageRequest, Pages
from pixelmirror.web.response import BeaconAnswer, Headers

logger = logging.getLogger("pixelmirror")

GetResponse = Callable[[HttpRequest], Any]

_page: ContextVar[PageRequest | None] = ContextVar("pixelmirror_django_page", default=None)


def current_page() -> PageRequest | None:
    """The page request being served, for the template tag; None outside one."""
    return _page.get()


def request_facts(request: HttpRequest) -> DjangoFacts | None:
    """The request's facts; None for a host ``ALLOWED_HOSTS`` refuses (Django answers 400)."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    meta = request.META
    return DjangoFacts(
        method=request.method or "GET",
        scheme=request.scheme or "http",
        host=host,
        path=escape_uri_path(request.path),
        query=meta.get("QUERY_STRING", ""),
        headers=EnvironHeaders(meta),
        peer=meta.get("REMOTE_ADDR"),
        request=request,
    )


class PixelMirrorMiddleware:
    """``"pixelmirror.django.PixelMirrorMiddleware"`` in ``MIDDLEWARE``: below
    ``GZipMiddleware`` (it only touches uncompressed HTML) and ``AuthenticationMiddleware``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        get_mirror()  # a bad setting fails at start-up, not on a request

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        found = _begin(request)
        if found is None:
            return self.get_response(request)
        pages, facts = found
        if pages.is_beacon(facts):
            return _beacon(pages, facts, request)
        page = pages.start(facts)
        if page is None:
            return self.get_response(request)
        with _finishing(page):
            with _serving(page):
                response = self.get_response(request)
            if _start(page, response, is_async=False):
                _hold(page, response)
                return response
        page.done()
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        found = _begin(request)
        if found is None:
            return await self.get_response(request)  # type: ignore[no-any-return]
        pages, facts = found
        # The identify hook may query the database: not on the event loop.
        run: Callable[[Callable[..., Any]], Callable[..., Any]] = (
            sync_to_async if identifies() else _awaitable
        )
        if pages.is_beacon(facts):
            return await run(_beacon)(pages, facts, request)  # type: ignore[no-any-return]
        page = pages.start(facts)
        if page is None:
            return await self.get_response(request)  # type: ignore[no-any-return]
        with _finishing(page):
            with _serving(page):
                response: HttpResponseBase = await self.get_response(request)
            # Starting the response asks the identify hook: off the event loop too.
            if await run(_start)(page, response, is_async=True):
                assert isinstance(response, StreamingHttpResponse)
                if response.is_async:
                    await _ahold(page, response)
                else:  # read in a thread, as Django reads the rest
                    await sync_to_async(_hold)(page, response)
                return response
        await run(page.done)()
        return response


def _begin(request: HttpRequest) -> tuple[Pages, DjangoFacts] | None:
    try:
        facts = request_facts(request)
        return None if facts is None else (get_mirror().pages, facts)
    except Exception:
        logger.exception("could not read the request; passing it through")
        return None


def _awaitable(call: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        return call(*args, **kwargs)

    return run


@contextmanager
def _serving(page: PageRequest) -> Iterator[None]:
    """The view runs with the visit current (``@track``) and the page findable (the tag)."""
    token = _page.set(page)
    try:
        with page:
            yield
    finally:
        _page.reset(token)


@contextmanager
def _finishing(page: PageRequest) -> Iterator[None]:
    """A view or a stream that raises still ends the page (its events are not mirrored)."""
    try:
        yield
    except BaseException:
        page.done()
        raise


def _beacon(pages: Pages, facts: DjangoFacts, request: HttpRequest) -> HttpResponse:
    try:
        body = request.read(MAX_BODY + 1)  # one byte past the limit is enough to refuse it
    except Exception:
        logger.exception("the beacon failed")
        answer = BeaconAnswer.failed()
    else:
        answer = pages.beacon(facts, body)
    response = HttpResponse(answer.body, status=answer.status)
    _apply(response, answer.headers)
    return response


def _start(page: PageRequest, response: HttpResponseBase, *, is_async: bool) -> bool:
    """Start the response by the page's plan; True: its stream is held, for the caller."""
    try:
        return _started(page, response, is_async=is_async)
    except Exception:
        logger.exception("could not rewrite the response; passing it through")
        return False


def _started(page: PageRequest, response: HttpResponseBase, *, is_async: bool) -> bool:
    headers: Headers = list(response.items())
    placed = page.placed
    if placed and isinstance(response, HttpResponse) and placed in response.content:
        _apply(response, page.respond_placed(response.status_code, headers))
        return False
    start = page.respond(response.status_code, headers)
    if start is None:
        if isinstance(response, HttpResponse):
            start, body = page.feed(response.content, more=False)
            response.content = body
        elif (
            isinstance(response, StreamingHttpResponse)
            and not isinstance(response, FileResponse)
            and (is_async or not response.is_async)
        ):
            return True
        else:  # a file, or an async stream under WSGI: it goes as it is
            start, _ = page.release()
    if start is not None and start is not headers:
        _apply(response, start)
    return False


def _hold(page: PageRequest, response: StreamingHttpResponse) -> None:
    chunks = iter(cast("Iterator[bytes]", response.streaming_content))
    while (head := _let_go(page, response, next(chunks, None))) is None:
        pass
    response.streaming_content = _Stream(page, head, chunks)


async def _ahold(page: PageRequest, response: StreamingHttpResponse) -> None:
    chunks = aiter(cast("AsyncIterator[bytes]", response.streaming_content))
    while (head := _let_go(page, response, await anext(chunks, None))) is None:
        pass
    response.streaming_content = _AsyncStream(page, head, chunks)


def _let_go(page: PageRequest, response: HttpResponseBase, chunk: bytes | None) -> bytes | None:
    """Feed the page a held stream's next chunk, or its end (None): None while it holds on,
    else the bytes to send first (the response then has the page's headers)."""
    more = chunk is not None
    start, head = page.feed(chunk or b"", more=more)
    if start is not None:
        _apply(response, start)
    elif more:
        return None
    return head


class _Stream:
    """The rest of a held stream; Django closes it when the response is over (the page's
    events are mirrored then)."""

    def __init__(self, page: PageRequest, head: bytes, rest: Iterator[bytes]) -> None:
        self.head, self.rest, self.close = head, rest, page.done

    def __iter__(self) -> Iterator[bytes]:
        if self.head:
            yield self.head
        yield from self.rest


class _AsyncStream:
    def __init__(self, page: PageRequest, head: bytes, rest: AsyncIterator[bytes]) -> None:
        self.head, self.rest, self.close = head, rest, page.done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            yield self.head
        async for chunk in self.rest:
            yield chunk


class RawCookie(Morsel[str]):
    """A Set-Cookie value pixelmirror formatted, sent byte for byte: Django's handlers send
    ``response.cookies`` through ``output()``, which would re-encode a parsed cookie."""

    def __init__(self, header: str) -> None:
        super().__init__()
        name, _, value = header.split(";", 1)[0].partition("=")
        self.set(name.strip(), value.strip(), value.strip())
        self.header = header

    def OutputString(self, attrs: Container[str] | None = None) -> str:
        return self.header

    def __getstate__(self) -> dict[str, str]:  # the cache middleware pickles responses
        return {"key": self.key, "value": self.value, "header": self.header}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.set(state["key"], state["value"], state["value"])
        self.header = state["header"]


def _apply(response: HttpResponseBase, headers: Headers) -> None:
    """Give ``response`` these headers; Set-Cookie values go to its cookies as they are."""
    fields = [(name, value) for name, value in headers if name.lower() != "set-cookie"]
    kept = {name.lower() for name, _ in fields}
    for name in [name for name in response.headers if name.lower() not in kept]:
        del response.headers[name]
    for name, value in fields:
        response.headers[name] = value
    for name, value in headers:
        if name.lower() == "set-cookie":
            cookie = RawCookie(value)
            response.cookies[cookie.key] = cookie


__all__ = ["PixelMirrorMiddleware", "RawCookie", "current_page", "request_facts"]
