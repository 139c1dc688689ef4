"""One :class:`~pixelmirror.mirror.PixelMirror` per process, configured from Django's settings.

``settings.PIXELMIRROR_*`` carry the environment variables' names and win over them; a text
value is read as the variable's would be, any other is taken as it is. Without a
``PIXELMIRROR_SECRET_KEY`` anywhere the visitor cookie is signed with Django's ``SECRET_KEY``
(and verified with ``SECRET_KEY_FALLBACKS``). ``PIXELMIRROR_IDENTIFY`` (a callable or its
dotted path) takes the ``HttpRequest`` and returns user_data for every event of the request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest
from django.utils.module_loading import import_string

from pixelmirror.config import ENV_PREFIX, Config, env_name
from pixelmirror.facts import RequestFacts
from pixelmirror.mirror import PixelMirror

__all__ = ["DjangoFacts", "get_mirror", "identifies", "mirror_config"]

IdentifyRequest = Callable[[HttpRequest], "Mapping[str, object] | None"]

_lock = threading.Lock()
_mirror: PixelMirror | None = None


@dataclass(frozen=True)
class DjangoFacts(RequestFacts):
    """:class:`RequestFacts` that keep their ``HttpRequest``, for ``PIXELMIRROR_IDENTIFY``."""

    request: HttpRequest | None = field(default=None, repr=False, compare=False)


def mirror_config() -> Config:
    """The :class:`Config` the settings give, the environment filling the rest."""
    environ = dict(os.environ)
    overrides: dict[str, Any] = {}
    for setting in fields(Config):
        name = env_name(setting.name)
        if hasattr(settings, name):
            value = getattr(settings, name)
            if isinstance(value, str):
                environ[name] = value
            else:
                overrides[setting.name] = value
    if "secret_key" not in overrides and not environ.get(env_name("secret_key"), "").strip():
        overrides["secret_key"] = (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS)
    return Config.from_env(environ, **overrides)


def identifies() -> bool:
    """Whether the site's identify hook runs for each request (it may query the database)."""
    return getattr(settings, "PIXELMIRROR_IDENTIFY", None) is not None


def _identify() -> Callable[[RequestFacts], Mapping[str, object] | None] | None:
    hook = getattr(settings, "PIXELMIRROR_IDENTIFY", None)
    if hook is None:
        return None
    of_request: IdentifyRequest = import_string(hook) if isinstance(hook, str) else hook

    def identify(facts: RequestFacts) -> Mapping[str, object] | None:
        request = facts.request if isinstance(facts, DjangoFacts) else None
        return None if request is None else of_request(request)

    return identify


def get_mirror() -> PixelMirror:
    """The process's mirror, built from the settings on first use (its sender starts then,
    and it is flushed and closed at exit, by the hook every mirror registers)."""
    global _mirror
    mirror = _mirror
    if mirror is None:
        with _lock:
            if _mirror is None:
                _mirror = PixelMirror(mirror_config(), identify=_identify())
            mirror = _mirror
    return mirror


def reset() -> None:
    """Close the process's mirror; the next use builds one from the settings as they are."""
    global _mirror
    with _lock:
        mirror, _mirror = _mirror, None
    if mirror is not None:
        mirror.close()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(ENV_PREFIX) or setting in ("SECRET_KEY", "SECRET_KEY_FALLBACKS"):
        reset()


# ``override_settings`` in a site's tests: the next request sees the new settings.
setting_changed.connect(_settings_changed, dispatch_uid="pixelmirror.django.conf")
