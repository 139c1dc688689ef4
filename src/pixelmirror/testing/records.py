"""What :class:`~pixelmirror.testing.FakeGraphAPI` records: each request, each accepted event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ReceivedEvent", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request :class:`FakeGraphAPI` saw, whatever it answered.

    Fields the request did not carry (or carried with the wrong type) are ``None``;
    ``pixel_id`` is ``None`` when the path was not ``/<version>/<pixel_id>/events``.
    """

    pixel_id: str | None
    api_version: str | None
    access_token: str | None
    test_event_code: str | None
    partner_agent: str | None
    appsecret_proof: str | None
    #: Length of ``data`` when it parsed as a list, else 0.
    event_count: int
    #: HTTP status answered; ``None`` for a simulated timeout (no answer at all).
    status: int | None
    method: str
    path: str
    #: Graph ``error.code`` / ``error.error_subcode`` of a JSON error answer.
    error_code: int | None = None
    error_subcode: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the request was answered 200 and its events accepted."""
        return self.status == 200


@dataclass(frozen=True)
class ReceivedEvent:
    """One event :class:`FakeGraphAPI` accepted; ``data`` is the event object as received."""

    pixel_id: str
    access_token: str
    test_event_code: str | None
    partner_agent: str | None
    data: dict[str, Any]

    @property
    def event_name(self) -> str:
        return str(self.data["event_name"])

    @property
    def event_id(self) -> str | None:
        value = self.data.get("event_id")
        return value if isinstance(value, str) else None

    @property
    def event_time(self) -> int:
        return int(self.data["event_time"])

    @property
    def action_source(self) -> str:
        return str(self.data["action_source"])

    @property
    def user_data(self) -> dict[str, Any]:
        value: dict[str, Any] = self.data["user_data"]
        return value

    @property
    def custom_data(self) -> dict[str, Any]:
        """``custom_data``, or an empty dict when the event had none."""
        value: dict[str, Any] = self.data.get("custom_data", {})
        return value
