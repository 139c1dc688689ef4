"""pixelmirror: the Meta Pixel in your pages, its Conversions API twin from your server.

Both copies of an event carry the same ``event_id``, so Meta counts it once.
"""

from __future__ import annotations

from pixelmirror.config import Config, ConfigError
from pixelmirror.delivery.graph import (
    AccessError,
    GraphError,
    GraphResponse,
    InvalidEventsError,
    TransientError,
)
from pixelmirror.events import ServerEvent
from pixelmirror.mirror import CheckResult, PixelMirror, Stats

__all__ = [
    "AccessError",
    "CheckResult",
    "Config",
    "ConfigError",
    "GraphError",
    "GraphResponse",
    "InvalidEventsError",
    "PixelMirror",
    "ServerEvent",
    "Stats",
    "TransientError",
]

__version__ = "0.1.0"
