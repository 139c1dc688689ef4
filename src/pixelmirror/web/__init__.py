"""The web side: which events a page fires and mirrors, and the adapters that serve it.

:class:`~pixelmirror.web.pages.Pages` holds the rules, built from the pieces it needs (never
the :class:`~pixelmirror.mirror.PixelMirror` itself); :mod:`pixelmirror.web.wsgi` and
:mod:`pixelmirror.web.asgi` translate a server's protocol into a
:class:`~pixelmirror.web.pages.PageRequest`'s few calls.
"""
