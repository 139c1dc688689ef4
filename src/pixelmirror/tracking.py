"""Per-request context: the visit, ``@track`` and ``current_event()``.

A page request (:class:`~pixelmirror.web.request.PageRequest`) puts a :class:`Visit` in a
context variable for the duration of the app's call. Context variables follow the request
into a thread pool (Starlette's sync endpoints) and into async views, and never leak between
concurrent requests, so nothing per-request lives on the middleware instance.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

from pixelmirror.accounts import Account
from pixelmirror.events import BrowserEvent, check_event_name, new_event_id
from pixelmirror.facts import RequestFacts
from pixelmirror.identity import Visitor

logger = logging.getLogger("pixelmirror.web")

P = ParamSpec("P")
R = TypeVar("R")

StatusFilter = Callable[[int], bool]


def successful(status: int) -> bool:
    """The default ``when``: a tracked event counts if the view answered 2xx or 3xx.

    Not 304: a revalidated page is one the visitor already has, events and all.
    """
    return 200 <= status < 400 and status != 304


@dataclass(eq=False)
class TrackedEvent:
    """An event a view marked with ``@track``; fill its dicts from the view.

    ``custom_data`` goes to both the pixel and CAPI; ``server_only`` is merged into the CAPI
    copy's custom_data only and never rendered into a page (margins, predicted LTV);
    ``user_data`` uses the long SDK names (``email``, ``phone``, ...) and is normalised and
    hashed for CAPI, never rendered into a page.
    """

    event_name: str
    event_id: str = field(default_factory=new_event_id)
    custom_data: dict[str, Any] = field(default_factory=dict)
    user_data: dict[str, Any] = field(default_factory=dict)
    server_only: dict[str, Any] = field(default_factory=dict)
    when: StatusFilter = successful
    #: Only this pixel of the page's account (``trackSingle``); None: every pixel.
    pixel_id: str | None = None

    def browser(self) -> BrowserEvent:
        """The browser copy: what the page fires, with the same ``event_id``."""
        return BrowserEvent(self.event_name, self.event_id, self.custom_data, self.pixel_id)


@dataclass(eq=False, slots=True)
class Visit:
    """Everything pixelmirror holds for one request: who, which events, what it did.
    Slots: every page makes one."""

    facts: RequestFacts
    #: None for a visitor who may not be tracked, whose page still gets a snippet: in beacon
    #: mode (no consent, a crawler: the same bytes as everyone's), and on a consent-pending
    #: page of inline mode.
    visitor: Visitor | None
    #: The pixels (and their options) this request's page belongs to.
    account: Account
    #: The page's PageView id, shared by the injected pixel and the mirrored server event.
    page_event_id: str = field(default_factory=new_event_id)
    #: Browser events carried over a redirect, waiting for the next HTML page.
    carried: list[BrowserEvent] = field(default_factory=list)
    tracked: list[TrackedEvent] = field(default_factory=list)
    #: What the site's identify hook found for this request, once it was asked (None: not yet).
    identified: dict[str, object] | None = None

    def tracked_for(self, status: int) -> list[TrackedEvent]:
        """The tracked events that count for a response with this status."""
        if not self.tracked:  # most pages: no list to build
            return []
        return [event for event in self.tracked if event.when(status)]


_visit: ContextVar[Visit | None] = ContextVar("pixelmirror_visit", default=None)
_event: ContextVar[TrackedEvent | None] = ContextVar("pixelmirror_event", default=None)


#: Make ``visit`` the current one, and undo that with its token: the context variable's own
#: methods, without a Python call around them (every page does both).
activate: Callable[[Visit], Token[Visit | None]] = _visit.set
deactivate: Callable[[Token[Visit | None]], None] = _visit.reset


def current_visit() -> Visit | None:
    """The visit of the request being served, or None outside one (or without consent)."""
    return _visit.get()


def current_event() -> TrackedEvent:
    """The event of the innermost ``@track`` view being run.

    Raises :class:`RuntimeError` outside such a view. Inside one it always works, even when
    the request gets no pixel (no consent, a crawler): the data then goes nowhere.
    """
    event = _event.get()
    if event is None:
        raise RuntimeError("current_event() is only available inside a view decorated with @track")
    return event


#: Views ``@track`` wrapped, with the event name: a route table that holds one of them rather
#: than its wrapper has ``@track`` above the route decorator (:func:`misplaced_track`).
_wrapped: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()
#: The attribute that marks ``@track``'s own wrappers.
TRACK_MARK = "__pixelmirror_track__"


def misplaced_track(view: object) -> str | None:
    """The event of a ``@track`` that never runs for ``view``, a view a router holds: the
    decorator wrapped it after the route decorator had registered it as it was."""
    if not callable(view) or getattr(view, TRACK_MARK, None) is not None:
        return None
    try:
        return _wrapped.get(view)
    except TypeError:  # not weakly referable: nothing @track wrapped
        return None


def _event_maker(
    event_name: str, when: StatusFilter | None, pixel_id: str | None
) -> Callable[[], TrackedEvent]:
    """Check the arguments once; the function that adds a new event to the current visit."""
    check_event_name(event_name)
    if pixel_id is not None and not pixel_id.isdigit():
        raise ValueError(f"pixel_id must be digits; got {pixel_id!r}")
    status_filter = when or successful

    def new_event() -> TrackedEvent:
        event = TrackedEvent(event_name, when=status_filter, pixel_id=pixel_id)
        visit = _visit.get()
        if visit is None or visit.visitor is None:
            pass  # not tracked: the view's data goes nowhere
        elif pixel_id is not None and pixel_id not in visit.account.pixel_ids:
            logger.warning(
                "%s is for pixel %s, which this page's account does not have",
                event_name,
                pixel_id,
            )
        else:
            visit.tracked.append(event)
        return event

    return new_event


def tracked(
    event_name: str, *, when: StatusFilter | None = None, pixel_id: str | None = None
) -> Callable[[], TrackedEvent]:
    """``@track`` as a dependency: ``event = Depends(tracked("Purchase"))`` in FastAPI.

    Each call makes a new :class:`TrackedEvent` of the current request, as ``@track`` does
    (same ``when`` and ``pixel_id``), and returns it: fill it from the view. Dependencies run
    before the view and outside any decorator, so this, not ``current_event()``, is how a
    FastAPI view gets its event by injection.
    """
    return _event_maker(event_name, when, pixel_id)


def track(
    event_name: str, *, when: StatusFilter | None = None, pixel_id: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a view as a conversion: ``@track("Purchase")`` under the route decorator.

    Each call of the view makes a :class:`TrackedEvent` with a fresh ``event_id``, fired in
    the browser and mirrored to CAPI with that same id, if ``when(status)`` holds for the
    response (default: 2xx or 3xx). Works on sync and async views. With ``pixel_id`` the
    event goes to that pixel of the page only (``trackSingle``), not to all of them.
    """
    new_event = _event_maker(event_name, when, pixel_id)

    def start() -> Token[TrackedEvent | None]:
        return _event.set(new_event())

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        if not _is_function(view):
            raise TypeError(
                f"@track({event_name!r}) got a {type(view).__name__}, not a view function: "
                "put @track below the route decorator"
            )
        with contextlib.suppress(TypeError):  # a builtin cannot be weakly referred to
            _wrapped[view] = event_name
        if inspect.iscoroutinefunction(view):
            async_view = cast(Callable[P, Awaitable[Any]], view)

            @functools.wraps(view)
            async def tracked_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                token = start()
                try:
                    return await async_view(*args, **kwargs)
                finally:
                    _event.reset(token)

            setattr(tracked_async, TRACK_MARK, event_name)
            return cast(Callable[P, R], tracked_async)

        @functools.wraps(view)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            token = start()
            try:
                return view(*args, **kwargs)
            finally:
                _event.reset(token)

        setattr(tracked, TRACK_MARK, event_name)
        return tracked

    return decorate


def _is_function(view: object) -> bool:
    """A function, method or partial: what a view is, unlike a router's route object (a
    ``@track`` above a route decorator that returns one)."""
    return inspect.isroutine(view) or isinstance(view, functools.partial)
