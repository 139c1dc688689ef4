"""The app ``"pixelmirror.django"`` in ``INSTALLED_APPS``: it holds the template tag library."""

from __future__ import annotations

from django.apps import AppConfig


class PixelMirrorConfig(AppConfig):
    name = "pixelmirror.django"
    label = "pixelmirror"
    verbose_name = "pixelmirror"
