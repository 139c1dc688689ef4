"""Helpers for the FakeGraphAPI tests: a valid event with real hashes, and how to post it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx

from pixelmirror.testing import FakeGraphAPI

NOW = 1_700_000_000
DAY = 86_400
PIXEL = "1234567890"
OTHER_PIXEL = "9876543210"
TOKEN = "EAAB-token-1"
GRAPH = "https://graph.facebook.com"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def proof(token: str, secret: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def make_event(event_id: str = "evt-1", **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "event_id": event_id,
        "user_data": {
            "em": [sha("john_smith@gmail.com")],
            "ph": [sha("16505551212")],
            "external_id": sha("user-42"),
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "client_ip_address": "2001:db8::7",
            "fbp": "fb.1.1700000000000.1234567",
        },
        "custom_data": {"value": 12.5, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def url(pixel: str = PIXEL, version: str = "v20.0") -> str:
    return f"/{version}/{pixel}/events"


def post(
    client: httpx.Client,
    events: list[Any],
    *,
    pixel: str = PIXEL,
    version: str = "v20.0",
    token: str | None = TOKEN,
    **params: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"data": events, **params}
    if token is not None:
        body["access_token"] = token
    return client.post(url(pixel, version), json=body)


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def fixed_clock() -> float:
    return float(NOW)


def assert_rejected(
    fake: FakeGraphAPI,
    response: httpx.Response,
    *,
    status: int = 400,
    code: int = 100,
    subcode: int | None = None,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert error["is_transient"] is False
    assert error["fbtrace_id"]
    # Nothing of the rejected batch was accepted.
    assert len(fake.events) == sum(r.event_count for r in fake.requests if r.ok)
    assert fake.requests[-1].status == status
    assert fake.requests[-1].error_code == code
    assert fake.requests[-1].error_subcode == subcode
    return error
