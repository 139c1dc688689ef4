"""Django support: ``"pixelmirror.django.PixelMirrorMiddleware"`` in ``MIDDLEWARE``, configured
by ``settings.PIXELMIRROR_*``; ``"pixelmirror.django"`` in ``INSTALLED_APPS`` for the
``{% load pixelmirror %}{% pixelmirror %}`` template tag.

``get_mirror()`` is the process's :class:`~pixelmirror.mirror.PixelMirror`, for ``send``,
``stats`` and the rest.
"""

from __future__ import annotations

from pixelmirror.django.conf import get_mirror
from pixelmirror.django.middleware import PixelMirrorMiddleware

__all__ = ["PixelMirrorMiddleware", "get_mirror"]
