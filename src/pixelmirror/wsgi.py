"""The WSGI middleware, where users import it from: ``pixelmirror.wsgi.PixelMirrorWSGI``.

It lives in :mod:`pixelmirror.web.wsgi`; ``mirror.wsgi(app)`` builds one.
"""

from __future__ import annotations

from pixelmirror.web.wsgi import EnvironHeaders, PixelMirrorWSGI, request_facts

__all__ = ["EnvironHeaders", "PixelMirrorWSGI", "request_facts"]
