"""The ASGI middleware, where users import it from: ``pixelmirror.asgi.PixelMirrorMiddleware``.

The adapter lives in :mod:`pixelmirror.web.asgi`; this name adds only the default mirror,
so that ``app.add_middleware(PixelMirrorMiddleware)`` works without one.
"""

from __future__ import annotations

from pixelmirror.mirror import PixelMirror
from pixelmirror.web import asgi
from pixelmirror.web.asgi import ASGIApp, Message, Receive, Send
from pixelmirror.web.scope import Scope, request_facts


class PixelMirrorMiddleware(asgi.PixelMirrorMiddleware):
    """ASGI middleware: ``app = mirror.asgi(app)``, or in Starlette and FastAPI
    ``app.add_middleware(PixelMirrorMiddleware, mirror=mirror)``.

    Without ``mirror`` it builds one from the ``PIXELMIRROR_*`` variables. On lifespan
    shutdown it flushes the outbox for up to ``PIXELMIRROR_SHUTDOWN_TIMEOUT`` seconds, then
    passes the shutdown on to the app, whether or not the outbox answered. Place it inside
    any compression middleware: it only touches uncompressed HTML.
    """

    def __init__(self, app: ASGIApp, mirror: PixelMirror | None = None) -> None:
        super().__init__(app, mirror if mirror is not None else PixelMirror())


__all__ = [
    "ASGIApp",
    "Message",
    "PixelMirrorMiddleware",
    "Receive",
    "Scope",
    "Send",
    "request_facts",
]
