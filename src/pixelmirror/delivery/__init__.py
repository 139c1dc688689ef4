"""Delivery: the dispatcher and the sinks it hands batches to, by destination.

:data:`DESTINATIONS` is the one place a destination registers: its key (what a stored
event's ``destination`` names) and how to open its sink from the configuration.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from pixelmirror.config import Config
from pixelmirror.delivery.graph import GraphClient, TokenSource
from pixelmirror.delivery.sink import Sink
from pixelmirror.events import META

#: Opens a destination's sink: ``(config, tokens, transport) -> Sink``.
SinkOpener = Callable[[Config, "TokenSource | None", "httpx.BaseTransport | None"], Sink]


def _meta(
    config: Config, tokens: TokenSource | None, transport: httpx.BaseTransport | None
) -> Sink:
    """Meta's Graph API, or the audit file ``PIXELMIRROR_SINK`` names in its place."""
    if config.sink is not None:
        from pixelmirror.delivery.filesink import FileSink

        return FileSink.from_url(config.sink, partner_agent=config.partner_agent)
    return GraphClient.from_config(config, tokens=tokens, transport=transport)


DESTINATIONS: dict[str, SinkOpener] = {META: _meta}


def open_sinks(
    config: Config,
    *,
    tokens: TokenSource | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Sink]:
    """Every registered destination's sink, by destination key."""
    return {key: opener(config, tokens, transport) for key, opener in DESTINATIONS.items()}


__all__ = ["DESTINATIONS", "Sink", "SinkOpener", "open_sinks"]
