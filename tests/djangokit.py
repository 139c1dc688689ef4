"""Django for the tests: configured once per test process, each test's site by
``override_settings``; the example shop served the same way."""

from __future__ import annotations

import django
from django.conf import settings


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
