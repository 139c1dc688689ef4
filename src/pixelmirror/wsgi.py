"""The WSGI middleware, where users import it from: ``pixelmirror.wsgi.PixelMirrorWSGI``.

It lives in :mod:`pixelmirror.web.wsgi`; ``mirror.wsgi(app)`` builds one.
"""

from __future__ import annotations

from pixelmirror.web.environ import EnvironHeaders, request_facts
from pixelmirror.web.wsgi import PixelMirrorWSGI

__all__ = ["EnvironHeaders", "PixelMirrorWSGI", "request_facts"]
