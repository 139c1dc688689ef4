"""``@track`` above the route decorator: found in the app's route table at the first request.

Flask's ``@app.route`` and FastAPI's ``@app.get`` register the function they are given and
return it unchanged, so a ``@track`` put above them wraps a function nobody calls: the view
runs untracked, silently. The route table still holds the unwrapped view, which ``@track``
remembers (:func:`~pixelmirror.tracking.misplaced_track`); an adapter asks here once, by
duck typing (Flask's ``view_functions``, Starlette's and FastAPI's ``routes``, mounts
included), and each such view is logged as an error. Nothing here imports a framework.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from pixelmirror.tracking import misplaced_track

logger = logging.getLogger("pixelmirror.web")

#: How deep to look through middleware (``.app``) and mounts for a route table.
MAX_DEPTH = 16


def misplaced_views(*apps: object) -> list[tuple[str, str]]:
    """``(route, event name)`` of every view whose ``@track`` sits above its route
    decorator, in the route tables found in ``apps`` and the layers under them."""
    found: dict[str, str] = {}
    for name, view in _views(apps):
        event = misplaced_track(view)
        if event is not None:
            found.setdefault(name, event)
    return sorted(found.items())


def warn_misplaced_tracks(*apps: object) -> None:
    """Log each view whose ``@track`` never runs. Never raises."""
    try:
        misplaced = misplaced_views(*apps)
    except Exception:  # an odd router must not break a request
        logger.debug("could not read the app's routes to check @track", exc_info=True)
        return
    for route, event in misplaced:
        logger.error(
            "@track(%r) on %s never runs: it sits above the route decorator, which registered "
            "the undecorated view; put @track below @app.route / @app.get",
            event,
            route,
        )


def _views(apps: tuple[object, ...]) -> Iterator[tuple[str, object]]:
    seen: set[int] = set()
    layers = [(app, 0) for app in apps]
    while layers:
        layer, depth = layers.pop()
        if layer is None or id(layer) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(layer))
        views = getattr(layer, "view_functions", None)  # Flask
        if isinstance(views, Mapping):
            yield from ((str(endpoint), view) for endpoint, view in views.items())
        routes = getattr(layer, "routes", None)  # Starlette, FastAPI, a Mount
        if isinstance(routes, list):
            for route in routes:
                endpoint = getattr(route, "endpoint", None)
                if endpoint is not None:
                    yield str(getattr(route, "path", route)), endpoint
                layers.append((route, depth + 1))
        # Through middleware and bound methods (a wrapped Flask app's wsgi_app) to the app.
        layers.append((getattr(layer, "app", None), depth + 1))
        layers.append((getattr(layer, "__self__", None), depth + 1))
