"""What every adapter shares: the pages it serves, and the request read once into facts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from pixelmirror.facts import RequestFacts
from pixelmirror.web.pages import Pages
from pixelmirror.web.routes import warn_misplaced_tracks

logger = logging.getLogger("pixelmirror.web")


class Served(Protocol):
    """What an adapter needs of the object that owns the pages (a ``PixelMirror``)."""

    @property
    def pages(self) -> Pages: ...


App = TypeVar("App")
Owner = TypeVar("Owner", bound=Served)
Raw = TypeVar("Raw")


class Adapter(Generic[App, Owner]):
    """An adapter's app, its pages, and the look at the app's routes at the first request
    (they are all there by then)."""

    def __init__(self, app: App, mirror: Owner) -> None:
        self.app = app
        self.mirror = mirror
        self.pages = mirror.pages
        self._routes_checked = False

    def _facts(
        self, read: Callable[[Raw], RequestFacts], raw: Raw, *apps: object
    ) -> RequestFacts | None:
        """``read(raw)``, the request's facts; None when they cannot be read (logged: the
        request passes through). ``apps``: where the routes are, besides the wrapped app."""
        if not self._routes_checked:
            self._routes_checked = True
            warn_misplaced_tracks(*apps, self.app)
        try:
            return read(raw)
        except Exception:
            logger.exception("could not read the request; passing it through")
            return None
