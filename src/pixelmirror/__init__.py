"""pixelmirror: the Meta Pixel in your pages, its Conversions API twin from your server.

Both copies of an event carry the same ``event_id``, so Meta counts it once.
"""

from __future__ import annotations

from pixelmirror.asgi import PixelMirrorMiddleware
from pixelmirror.config import Config, ConfigError
from pixelmirror.delivery.graph import (
    AccessError,
    GraphError,
    GraphResponse,
    InvalidEventsError,
    TransientError,
)
from pixelmirror.events import ServerEvent
from pixelmirror.facts import RequestFacts
from pixelmirror.mirror import EVENTS_HEADER, CheckResult, PixelMirror, Stats
from pixelmirror.tracking import TrackedEvent, current_event, current_visit, track
from pixelmirror.wsgi import PixelMirrorWSGI

__all__ = [
    "EVENTS_HEADER",
    "AccessError",
    "CheckResult",
    "Config",
    "ConfigError",
    "GraphError",
    "GraphResponse",
    "InvalidEventsError",
    "PixelMirror",
    "PixelMirrorMiddleware",
    "PixelMirrorWSGI",
    "RequestFacts",
    "ServerEvent",
    "Stats",
    "TrackedEvent",
    "TransientError",
    "current_event",
    "current_visit",
    "track",
]

#: The one place the version is written: pyproject.toml reads it, `pixelmirror --version`
#: prints it.
__version__ = "0.2.0.dev0"
