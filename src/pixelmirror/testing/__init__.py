"""A validating fake of Meta's Conversions API endpoint, for tests.

:class:`FakeGraphAPI` answers ``POST {graph}/{version}/{pixel_id}/events`` the way Meta does:
it rejects a whole batch when one event is wrong, insists on hashed contact data, checks
tokens, ``appsecret_proof`` and the API version, and can be told to fail on purpose. Use it
in-process as an ``httpx`` transport, or as a real HTTP server on loopback for code that
runs in another thread or process.

Run ``python -m pixelmirror.testing --port 8765`` for a standalone server that prints each
accepted event as one JSON line on stdout.

The package: ``fake.py`` holds :class:`FakeGraphAPI`; ``rules.py`` the fake's own copy of
Meta's documented rules (independent of pixelmirror's production code, on purpose);
``validate.py`` the judgement of a request; ``wire.py`` Graph's request and answer formats;
``records.py`` :class:`RecordedRequest` and :class:`ReceivedEvent`; ``tokens.py`` the token
model; ``server.py`` the loopback server; ``cli.py`` the command.
"""

from __future__ import annotations

from pixelmirror.testing.fake import FakeGraphAPI
from pixelmirror.testing.records import ReceivedEvent, RecordedRequest
from pixelmirror.testing.rules import (
    ACTION_SOURCES,
    HASHED_USER_DATA_KEYS,
    SUBCODE_INSUFFICIENT_USER_DATA,
    SUBCODE_INVALID_HASHED_DATA,
    SUBCODE_OBJECT_NOT_FOUND,
    SUBCODE_PURCHASE_VALUE_CURRENCY,
    SUBCODE_TIMESTAMP_IN_FUTURE,
    SUBCODE_TIMESTAMP_TOO_OLD,
)

__all__ = [
    "ACTION_SOURCES",
    "HASHED_USER_DATA_KEYS",
    "SUBCODE_INSUFFICIENT_USER_DATA",
    "SUBCODE_INVALID_HASHED_DATA",
    "SUBCODE_OBJECT_NOT_FOUND",
    "SUBCODE_PURCHASE_VALUE_CURRENCY",
    "SUBCODE_TIMESTAMP_IN_FUTURE",
    "SUBCODE_TIMESTAMP_TOO_OLD",
    "FakeGraphAPI",
    "ReceivedEvent",
    "RecordedRequest",
]
