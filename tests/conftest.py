"""Fixtures shared by the test modules."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Protocol

import pytest

from pixelmirror.events import ServerEvent


class MakeEvent(Protocol):
    def __call__(
        self, pixel_id: str = "1", test_event_code: str | None = None, **fields: Any
    ) -> ServerEvent: ...


@pytest.fixture
def make_event() -> MakeEvent:
    """Build stored-shape events with the plain constructor: no normalisation, no validation.

    Each event gets a fresh ``event_id`` (``evt-1``, ``evt-2``, ...) unless one is given;
    any other :class:`ServerEvent` field can be overridden by keyword.
    """
    numbers = itertools.count(1)

    def make(pixel_id: str = "1", test_event_code: str | None = None, **fields: Any) -> ServerEvent:
        fields.setdefault("event_id", f"evt-{next(numbers)}")
        fields.setdefault("event_name", "Purchase")
        fields.setdefault("event_time", int(time.time()))
        fields.setdefault("action_source", "website")
        if "payload" not in fields:
            body = {
                key: fields[key]
                for key in ("event_name", "event_time", "event_id", "action_source")
            }
            fields["payload"] = json.dumps({**body, "user_data": {"em": ["0" * 64]}}).encode()
        return ServerEvent(pixel_id=pixel_id, test_event_code=test_event_code, **fields)

    return make
