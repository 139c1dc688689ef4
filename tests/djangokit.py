"""Django for the tests: configured once per test process, each test's site by
``override_settings``; the example shop served the same way."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import django
import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings

from pixelmirror.django import conf, get_mirror
from servers import load_example


def setup() -> None:
    """Configure Django for this process, once (the example shop then keeps it)."""
    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="django-test-secret-key-long-enough-to-sign",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "pixelmirror.django",
        ],
        # In memory: Django runs every query of a test on its main thread, async views too.
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        MIDDLEWARE=[],
        ROOT_URLCONF="djangokit",
        USE_TZ=True,
    )
    django.setup()


urlpatterns: list[object] = []


def django_shop(request: pytest.FixtureRequest) -> ModuleType:
    """``examples/django_app/app.py`` as the other shops are loaded: ``app`` (Django's WSGI
    handler) and ``mirror``, under the example's settings until the test ends."""
    setup()
    conf.reset()
    module = load_example("django_app")
    overrides = override_settings(**{**module.SETTINGS, "ROOT_URLCONF": module})
    overrides.enable()
    request.addfinalizer(conf.reset)
    request.addfinalizer(overrides.disable)
    return SimpleNamespace(app=WSGIHandler(), mirror=get_mirror())  # type: ignore[return-value]
