from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pixelmirror import testing
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


@pytest.fixture
def fake() -> FakeGraphAPI:
    return FakeGraphAPI(access_tokens=[TOKEN], clock=fixed_clock)


@pytest.fixture
def client(fake: FakeGraphAPI) -> Iterator[httpx.Client]:
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        yield c


@pytest.fixture
def served(fake: FakeGraphAPI) -> Iterator[httpx.Client]:
    with fake.serve() as base_url, httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


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


# -- accepting ------------------------------------------------------------------------------


def test_valid_batch_is_accepted_and_recorded(fake: FakeGraphAPI, client: httpx.Client) -> None:
    events = [make_event("a"), make_event("b", event_name="AddToCart", custom_data={})]
    response = post(client, events, test_event_code="TEST123", partner_agent="pixelmirror")

    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 2
    assert body["messages"] == []
    assert body["fbtrace_id"]
    assert response.headers["content-type"].startswith("application/json")

    received = fake.events
    assert [e.data for e in received] == events
    first = received[0]
    assert first.pixel_id == PIXEL
    assert first.access_token == TOKEN
    assert first.test_event_code == "TEST123"
    assert first.partner_agent == "pixelmirror"
    assert first.event_name == "Purchase"
    assert first.event_id == "a"
    assert first.event_time == NOW - 60
    assert first.action_source == "website"
    assert first.user_data["em"] == [sha("john_smith@gmail.com")]
    assert first.custom_data == {"value": 12.5, "currency": "EUR"}
    assert fake.event_ids() == ["a", "b"]

    (request,) = fake.requests
    assert request.ok
    assert request.pixel_id == PIXEL
    assert request.api_version == "v20.0"
    assert request.access_token == TOKEN
    assert request.test_event_code == "TEST123"
    assert request.partner_agent == "pixelmirror"
    assert request.appsecret_proof is None
    assert request.event_count == 2
    assert request.method == "POST"
    assert request.path == url()


def test_valid_batch_over_loopback(fake: FakeGraphAPI, served: httpx.Client) -> None:
    response = post(served, [make_event("a"), make_event("b")])
    assert response.status_code == 200
    assert response.json()["events_received"] == 2
    assert response.headers["content-length"] == str(len(response.content))
    assert fake.event_ids() == ["a", "b"]
    # Keep-alive: the same client reuses its connection for the next request.
    assert post(served, [make_event("c")]).status_code == 200
    assert fake.event_ids() == ["a", "b", "c"]


def test_event_ids_keep_duplicates_and_skip_missing(
    fake: FakeGraphAPI, client: httpx.Client
) -> None:
    no_id = make_event()
    del no_id["event_id"]
    post(client, [make_event("x"), no_id, make_event("x")])
    assert fake.event_ids() == ["x", "x"]
    assert fake.events[1].event_id is None


def test_recordings_are_copies(fake: FakeGraphAPI, client: httpx.Client) -> None:
    post(client, [make_event("a")])
    fake.events[0].data["event_name"] = "Mutated"
    fake.events[0].user_data.clear()
    fake.requests.clear()
    assert fake.events[0].event_name == "Purchase"
    assert fake.events[0].user_data
    assert len(fake.requests) == 1


def test_custom_data_defaults_to_empty(fake: FakeGraphAPI, client: httpx.Client) -> None:
    event = make_event(event_name="Lead")
    del event["custom_data"]
    assert post(client, [event]).status_code == 200
    assert fake.events[0].custom_data == {}


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(
            make_event(action_source="physical_store", event_time=NOW - 61 * DAY),
            id="store-61-days",
        ),
        pytest.param(make_event(event_time=NOW - 7 * DAY), id="exactly-7-days"),
        pytest.param(make_event(event_time=NOW + 600), id="10-minutes-ahead"),
        pytest.param(make_event(event_name="x" * 50), id="name-50-chars"),
        pytest.param(
            make_event(custom_data={"value": 0, "currency": "usd"}), id="purchase-int-value"
        ),
        pytest.param(
            make_event(
                action_source="system_generated",
                event_source_url=None,
                user_data={"external_id": [sha("1"), sha("2")]},
            ),
            id="non-website-external-id-list",
        ),
        pytest.param(
            make_event(user_data={"client_user_agent": "UA", "fbc": "fb.1.1.abc"}),
            id="fbc-and-ua",
        ),
        # Meta recommends hashing external_id but takes it as sent.
        pytest.param(
            make_event(user_data={"client_user_agent": "UA", "external_id": "user-42"}),
            id="raw-external-id",
        ),
        pytest.param(
            make_event(
                action_source="email", event_source_url=None, user_data={"external_id": ["a", "b"]}
            ),
            id="raw-external-id-list",
        ),
        pytest.param(
            make_event(user_data={"client_user_agent": "UA", "client_ip_address": "203.0.113.9"}),
            id="ipv4-and-ua",
        ),
    ],
)
def test_edge_events_accepted(
    fake: FakeGraphAPI, client: httpx.Client, event: dict[str, Any]
) -> None:
    response = post(client, [event])
    assert response.status_code == 200, response.text
    assert len(fake.events) == 1


def test_exactly_1000_events_accepted(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = post(client, [make_event(f"e{i}") for i in range(1000)])
    assert response.json()["events_received"] == 1000
    assert len(fake.events) == 1000


# -- rejecting: per-event rules --------------------------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def setter(key: str, value: Any) -> Mutator:
    def mutate(event: dict[str, Any]) -> None:
        event[key] = value

    return mutate


def deleter(key: str) -> Mutator:
    def mutate(event: dict[str, Any]) -> None:
        del event[key]

    return mutate


def user(key: str, value: Any = None, *, delete: bool = False) -> Mutator:
    def mutate(event: dict[str, Any]) -> None:
        if delete:
            del event["user_data"][key]
        else:
            event["user_data"][key] = value

    return mutate


def user_only(user_data: dict[str, Any]) -> Mutator:
    return setter("user_data", user_data)


TOO_OLD = testing.SUBCODE_TIMESTAMP_TOO_OLD
FUTURE = testing.SUBCODE_TIMESTAMP_IN_FUTURE
HASH = testing.SUBCODE_INVALID_HASHED_DATA
WEAK = testing.SUBCODE_INSUFFICIENT_USER_DATA
PURCHASE = testing.SUBCODE_PURCHASE_VALUE_CURRENCY


@pytest.mark.parametrize(
    ("mutate", "subcode", "fragment"),
    [
        pytest.param(deleter("event_name"), None, "event_name", id="name-missing"),
        pytest.param(setter("event_name", ""), None, "event_name", id="name-empty"),
        pytest.param(setter("event_name", "x" * 51), None, "event_name", id="name-51-chars"),
        pytest.param(setter("event_name", 7), None, "event_name", id="name-not-string"),
        pytest.param(deleter("event_time"), None, "event_time", id="time-missing"),
        pytest.param(setter("event_time", NOW - 60.5), None, "event_time", id="time-float"),
        pytest.param(setter("event_time", str(NOW)), None, "event_time", id="time-string"),
        pytest.param(setter("event_time", True), None, "event_time", id="time-bool"),
        pytest.param(setter("event_time", NOW - 7 * DAY - 1), TOO_OLD, "7 days", id="time-too-old"),
        pytest.param(
            lambda e: e.update(action_source="physical_store", event_time=NOW - 62 * DAY - 1),
            TOO_OLD,
            "62 days",
            id="store-time-too-old",
        ),
        pytest.param(setter("event_time", NOW + 601), FUTURE, "future", id="time-future"),
        pytest.param(setter("event_time", NOW * 1000), FUTURE, "milliseconds", id="time-in-ms"),
        pytest.param(deleter("action_source"), None, "action_source", id="source-missing"),
        pytest.param(setter("action_source", "web"), None, "action_source", id="source-unknown"),
        pytest.param(deleter("event_source_url"), None, "event_source_url", id="url-missing"),
        pytest.param(
            setter("event_source_url", "/checkout"), None, "event_source_url", id="url-relative"
        ),
        pytest.param(deleter("user_data"), None, "user_data is required", id="user-data-missing"),
        pytest.param(
            setter("user_data", [sha("a")]), None, "user_data must be", id="user-data-list"
        ),
        pytest.param(
            user("client_user_agent", delete=True), None, "client_user_agent", id="ua-missing"
        ),
        pytest.param(user("client_user_agent", ""), None, "client_user_agent", id="ua-empty"),
        pytest.param(user("fbp", 123), None, "fbp", id="fbp-not-string"),
        pytest.param(
            user("client_ip_address", "999.1.1.1"), None, "client_ip_address", id="bad-ip"
        ),
        pytest.param(
            user("client_ip_address", "localhost"), None, "client_ip_address", id="ip-name"
        ),
        pytest.param(user("em", "john_smith@gmail.com"), HASH, "user_data.em", id="raw-email"),
        pytest.param(
            user("em", ["john_smith@gmail.com"]), HASH, "user_data.em", id="raw-email-list"
        ),
        pytest.param(user("ph", "16505551212"), HASH, "user_data.ph", id="raw-phone"),
        pytest.param(user("fn", "mary"), HASH, "user_data.fn", id="raw-first-name"),
        pytest.param(user("ln", "smith"), HASH, "user_data.ln", id="raw-last-name"),
        pytest.param(user("db", "19970216"), HASH, "user_data.db", id="raw-birth-date"),
        pytest.param(user("ge", "f"), HASH, "user_data.ge", id="raw-gender"),
        pytest.param(user("ct", "sanfrancisco"), HASH, "user_data.ct", id="raw-city"),
        pytest.param(user("st", "ca"), HASH, "user_data.st", id="raw-state"),
        pytest.param(user("zp", "94025"), HASH, "user_data.zp", id="raw-zip"),
        pytest.param(user("country", "us"), HASH, "user_data.country", id="raw-country"),
        pytest.param(user("external_id", ""), None, "external_id", id="external-id-empty"),
        pytest.param(user("external_id", 42), None, "external_id", id="external-id-number"),
        pytest.param(user("external_id", []), None, "external_id", id="external-id-empty-list"),
        pytest.param(
            user("external_id", ["a", 1]), None, "external_id", id="external-id-list-one-number"
        ),
        pytest.param(user("em", sha("a").upper()), HASH, "user_data.em", id="uppercase-hex"),
        pytest.param(user("em", sha("a")[:63]), HASH, "user_data.em", id="hash-63-chars"),
        pytest.param(user("em", hashlib.md5(b"a").hexdigest()), HASH, "user_data.em", id="md5"),
        pytest.param(
            user("em", [sha("a"), "raw@example.com"]), HASH, "user_data.em", id="list-one-raw"
        ),
        pytest.param(user("em", []), HASH, "user_data.em", id="empty-list"),
        pytest.param(user("em", None), HASH, "user_data.em", id="null-hash"),
        pytest.param(
            user_only({"client_user_agent": "UA", "ct": sha("paris"), "country": sha("fr")}),
            WEAK,
            "insufficient",
            id="weak-location-only",
        ),
        pytest.param(
            lambda e: e.update(
                action_source="email", user_data={"fn": sha("mary"), "ge": sha("f")}
            ),
            WEAK,
            "insufficient",
            id="weak-first-name-gender",
        ),
        pytest.param(
            lambda e: e.update(action_source="email", user_data={}),
            WEAK,
            "insufficient",
            id="empty-user-data",
        ),
        pytest.param(setter("custom_data", [1]), None, "custom_data", id="custom-data-list"),
        pytest.param(
            setter("custom_data", {"currency": "EUR"}), PURCHASE, "value", id="purchase-no-value"
        ),
        pytest.param(
            setter("custom_data", {"value": "12.50", "currency": "EUR"}),
            PURCHASE,
            "value",
            id="purchase-string-value",
        ),
        pytest.param(
            setter("custom_data", {"value": True, "currency": "EUR"}),
            PURCHASE,
            "value",
            id="purchase-bool-value",
        ),
        pytest.param(
            setter("custom_data", {"value": 1, "currency": "EURO"}),
            PURCHASE,
            "currency",
            id="purchase-bad-currency",
        ),
        pytest.param(deleter("custom_data"), PURCHASE, "currency", id="purchase-no-custom-data"),
        pytest.param(setter("event_id", ""), None, "event_id", id="event-id-empty"),
        pytest.param(setter("event_id", 123), None, "event_id", id="event-id-number"),
    ],
)
def test_a_bad_event_rejects_the_whole_batch(
    fake: FakeGraphAPI,
    client: httpx.Client,
    mutate: Mutator,
    subcode: int | None,
    fragment: str,
) -> None:
    bad = make_event("bad")
    mutate(bad)
    response = post(client, [make_event("ok-0"), make_event("ok-1"), bad, make_event("ok-3")])

    error = assert_rejected(fake, response, subcode=subcode)
    assert fake.events == []
    assert error["error_user_msg"].startswith("event index 2: ")
    assert fragment in error["error_user_msg"]
    assert error["error_user_title"]
    assert fake.requests[-1].event_count == 4


def test_raw_pii_is_not_echoed_in_the_error(fake: FakeGraphAPI, client: httpx.Client) -> None:
    bad = make_event()
    bad["user_data"]["em"] = "john_smith@gmail.com"
    response = post(client, [bad])
    assert_rejected(fake, response, subcode=HASH)
    assert "john_smith" not in response.text


def test_first_bad_event_is_reported(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = post(client, [make_event(), "not an object", make_event(event_name="")])
    error = assert_rejected(fake, response)
    assert error["error_user_msg"].startswith("event index 1: ")


def test_clock_drives_the_time_window() -> None:
    now = [float(NOW)]
    fake = FakeGraphAPI(clock=lambda: now[0])
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()]).status_code == 200
        now[0] += 8 * DAY
        fake.reset()
        assert_rejected(fake, post(c, [make_event()]), subcode=TOO_OLD)


# -- rejecting: request-level rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"access_token": TOKEN}, "data is required", id="data-missing"),
        pytest.param({"access_token": TOKEN, "data": []}, "non-empty", id="data-empty"),
        pytest.param({"access_token": TOKEN, "data": {"a": 1}}, "array", id="data-object"),
        pytest.param({"access_token": TOKEN, "data": "[oops"}, "array", id="data-bad-json-string"),
        pytest.param(
            {"access_token": TOKEN, "data": [make_event(f"e{i}") for i in range(1001)]},
            "at most 1000",
            id="data-1001-events",
        ),
        pytest.param(
            {"access_token": TOKEN, "data": [make_event()], "partner_agent": "p" * 23},
            "partner_agent",
            id="agent-23-chars",
        ),
        pytest.param(
            {"access_token": TOKEN, "data": [make_event()], "partner_agent": "x1"},
            "partner_agent",
            id="agent-one-letter",
        ),
        pytest.param(
            {"access_token": TOKEN, "data": [make_event()], "partner_agent": 12},
            "partner_agent",
            id="agent-not-string",
        ),
        pytest.param(
            {"access_token": TOKEN, "data": [make_event()], "test_event_code": 1},
            "test_event_code",
            id="test-code-not-string",
        ),
    ],
)
def test_bad_request_parameters(
    fake: FakeGraphAPI, client: httpx.Client, body: dict[str, Any], fragment: str
) -> None:
    response = client.post(url(), json=body)
    error = assert_rejected(fake, response)
    assert fragment in error["message"]


def test_1001_events_are_counted_but_not_accepted(fake: FakeGraphAPI, client: httpx.Client) -> None:
    assert_rejected(fake, post(client, [make_event(f"e{i}") for i in range(1001)]))
    assert fake.requests[-1].event_count == 1001


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        pytest.param(b"{not json", {"Content-Type": "application/json"}, id="bad-json"),
        pytest.param(b"[1, 2]", {"Content-Type": "application/json"}, id="json-array"),
        pytest.param(b"<xml/>", {"Content-Type": "application/xml"}, id="xml"),
    ],
)
def test_unparsable_bodies(
    fake: FakeGraphAPI, client: httpx.Client, content: bytes, headers: dict[str, str]
) -> None:
    response = client.post(url(), content=content, headers=headers, params={"access_token": TOKEN})
    assert_rejected(fake, response)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v20.0/not-a-pixel/events", id="non-digit-pixel"),
        pytest.param(f"/v20.0/{PIXEL}/activities", id="other-edge"),
        pytest.param(f"/v20.0/{PIXEL}", id="node-only"),
        pytest.param("/", id="root"),
    ],
)
def test_unknown_paths(fake: FakeGraphAPI, client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"data": [make_event()], "access_token": TOKEN})
    error = assert_rejected(fake, response, status=404, subcode=33)
    assert "does not exist" in error["message"]
    assert fake.requests[-1].pixel_id is None


def test_non_post_method(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = client.get(url(), params={"access_token": TOKEN})
    error = assert_rejected(fake, response, subcode=33)
    assert error["message"].startswith("Unsupported get request.")


# -- API version ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(url(version="v19.0"), id="below-minimum"),
        pytest.param(url(version="v2.12"), id="old-major"),
        pytest.param(url(version="latest"), id="malformed"),
        pytest.param(url(version="v20"), id="no-minor"),
        pytest.param(f"/{PIXEL}/events", id="unversioned"),
    ],
)
def test_dead_versions_answer_2635(fake: FakeGraphAPI, client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"data": [make_event()], "access_token": TOKEN})
    error = assert_rejected(fake, response, code=2635)
    assert error["message"].startswith("(#2635) You are calling a deprecated version")
    assert "v20.0" in error["message"]


@pytest.mark.parametrize("version", ["v20.0", "v20.1", "v26.0", "v100.0"])
def test_current_versions_accepted(client: httpx.Client, version: str) -> None:
    assert post(client, [make_event()], version=version).status_code == 200


def test_min_api_version_is_configurable() -> None:
    fake = FakeGraphAPI(min_api_version="v26.0", clock=fixed_clock)
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert_rejected(fake, post(c, [make_event()], version="v25.9"), code=2635)
        assert post(c, [make_event()], version="v26.0").status_code == 200


# -- tokens -----------------------------------------------------------------------------------


def test_missing_token(fake: FakeGraphAPI, client: httpx.Client) -> None:
    assert_rejected(fake, post(client, [make_event()], token=None), status=401, code=190)
    assert_rejected(fake, post(client, [make_event()], token=""), status=401, code=190)
    assert fake.requests[-1].access_token == ""


def test_unknown_token(fake: FakeGraphAPI, client: httpx.Client) -> None:
    error = assert_rejected(fake, post(client, [make_event()], token="nope"), code=190)
    assert error["type"] == "OAuthException"
    assert "Invalid OAuth access token" in error["message"]


def test_non_string_token(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = client.post(url(), json={"data": [make_event()], "access_token": 12345})
    assert_rejected(fake, response, code=190)
    assert fake.requests[-1].access_token is None


def test_revoke_and_grant(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.revoke(TOKEN)
    error = assert_rejected(fake, post(client, [make_event()]), code=190, subcode=460)
    assert "session has been invalidated" in error["message"]

    fake.grant(TOKEN)
    assert post(client, [make_event()]).status_code == 200

    fake.grant("EAAB-new")
    assert post(client, [make_event()], token="EAAB-new").status_code == 200
    assert post(client, [make_event()], pixel=OTHER_PIXEL, token="EAAB-new").status_code == 200


def test_any_token_when_unconfigured() -> None:
    fake = FakeGraphAPI(clock=fixed_clock)
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()], token="whatever").status_code == 200
        assert post(c, [make_event()], pixel=OTHER_PIXEL, token="other").status_code == 200
        assert_rejected(fake, post(c, [make_event()], token=None), status=401, code=190)
        fake.revoke("whatever")
        assert_rejected(fake, post(c, [make_event()], token="whatever"), code=190, subcode=460)
        assert post(c, [make_event()], token="other").status_code == 200
        fake.grant("whatever")
        assert post(c, [make_event()], token="whatever").status_code == 200


def test_a_lone_string_is_one_token() -> None:
    fake = FakeGraphAPI(access_tokens="secret", clock=fixed_clock)
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()], token="secret").status_code == 200
        assert_rejected(fake, post(c, [make_event()], token="s"), code=190)


def test_per_pixel_tokens() -> None:
    fake = FakeGraphAPI(
        access_tokens={PIXEL: ["token-a"], OTHER_PIXEL: ["token-b"]}, clock=fixed_clock
    )
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()], token="token-a").status_code == 200
        assert post(c, [make_event()], pixel=OTHER_PIXEL, token="token-b").status_code == 200

        # A real token used on a pixel it has no access to: "object does not exist".
        error = assert_rejected(
            fake, post(c, [make_event()], pixel=OTHER_PIXEL, token="token-a"), subcode=33
        )
        assert f"Object with ID '{OTHER_PIXEL}' does not exist" in error["message"]
        # A pixel missing from the mapping does not exist at all.
        assert_rejected(fake, post(c, [make_event()], pixel="555", token="token-a"), subcode=33)
        # A token valid nowhere is a token error.
        assert_rejected(fake, post(c, [make_event()], token="token-z"), code=190)

        fake.grant("token-a", pixel_id=OTHER_PIXEL)
        assert post(c, [make_event()], pixel=OTHER_PIXEL, token="token-a").status_code == 200
        fake.grant("token-c", pixel_id="555")
        assert post(c, [make_event()], pixel="555", token="token-c").status_code == 200
        assert_rejected(fake, post(c, [make_event()], token="token-c"), subcode=33)

        fake.grant("token-all")
        assert post(c, [make_event()], token="token-all").status_code == 200
        assert post(c, [make_event()], pixel="555", token="token-all").status_code == 200

        fake.revoke("token-a")
        assert_rejected(fake, post(c, [make_event()], token="token-a"), code=190, subcode=460)
        assert_rejected(
            fake, post(c, [make_event()], pixel=OTHER_PIXEL, token="token-a"), code=190, subcode=460
        )


# -- appsecret_proof --------------------------------------------------------------------------


@pytest.fixture
def secret_fake() -> FakeGraphAPI:
    return FakeGraphAPI(access_tokens=[TOKEN], app_secret="s3cr3t", clock=fixed_clock)


@pytest.fixture
def secret_client(secret_fake: FakeGraphAPI) -> Iterator[httpx.Client]:
    with httpx.Client(transport=secret_fake.transport, base_url=GRAPH) as c:
        yield c


def test_appsecret_proof_required(secret_fake: FakeGraphAPI, secret_client: httpx.Client) -> None:
    error = assert_rejected(secret_fake, post(secret_client, [make_event()]))
    assert "appsecret_proof" in error["message"]


@pytest.mark.parametrize(
    "bad_proof",
    [
        pytest.param(proof(TOKEN, "wrong"), id="wrong-secret"),
        pytest.param(proof("other-token", "s3cr3t"), id="wrong-token"),
        pytest.param("zz", id="garbage"),
        pytest.param("prüfung", id="non-ascii"),
    ],
)
def test_appsecret_proof_checked(
    secret_fake: FakeGraphAPI, secret_client: httpx.Client, bad_proof: str
) -> None:
    response = post(secret_client, [make_event()], appsecret_proof=bad_proof)
    error = assert_rejected(secret_fake, response)
    assert error["message"] == "Invalid appsecret_proof provided in the API argument"


def test_appsecret_proof_accepted_in_body_and_query(
    secret_fake: FakeGraphAPI, secret_client: httpx.Client
) -> None:
    good = proof(TOKEN, "s3cr3t")
    assert post(secret_client, [make_event()], appsecret_proof=good).status_code == 200
    response = secret_client.post(
        url(),
        params={"access_token": TOKEN, "appsecret_proof": good},
        json={"data": [make_event()]},
    )
    assert response.status_code == 200
    assert secret_fake.requests[-1].appsecret_proof == good
    assert len(secret_fake.events) == 2


# -- parameter styles -------------------------------------------------------------------------


def test_form_encoded(fake: FakeGraphAPI, client: httpx.Client) -> None:
    events = [make_event("f1"), make_event("f2")]
    response = client.post(
        url(),
        data={
            "data": json.dumps(events),
            "access_token": TOKEN,
            "test_event_code": "TEST9",
            "partner_agent": "pixelmirror",
        },
    )
    assert response.status_code == 200, response.text
    assert [e.data for e in fake.events] == events
    assert fake.events[0].test_event_code == "TEST9"
    assert fake.requests[-1].partner_agent == "pixelmirror"


def test_query_string_token_with_json_body(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = client.post(url(), params={"access_token": TOKEN}, json={"data": [make_event()]})
    assert response.status_code == 200
    assert fake.events[0].access_token == TOKEN


@pytest.mark.parametrize("scheme", ["OAuth", "Bearer"])
def test_token_in_authorization_header(
    fake: FakeGraphAPI, client: httpx.Client, scheme: str
) -> None:
    response = client.post(
        url(), headers={"Authorization": f"{scheme} {TOKEN}"}, json={"data": [make_event()]}
    )
    assert response.status_code == 200
    assert fake.requests[-1].access_token == TOKEN


def test_body_wins_over_query(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = client.post(
        url(),
        params={"access_token": "stale"},
        json={"data": [make_event()], "access_token": TOKEN},
    )
    assert response.status_code == 200


def test_everything_in_the_query_string(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = client.post(
        url(), params={"access_token": TOKEN, "data": json.dumps([make_event("q")])}
    )
    assert response.status_code == 200
    assert fake.event_ids() == ["q"]


def test_json_body_with_data_as_string(fake: FakeGraphAPI, client: httpx.Client) -> None:
    response = client.post(
        url(), json={"data": json.dumps([make_event("s")]), "access_token": TOKEN}
    )
    assert response.status_code == 200
    assert fake.event_ids() == ["s"]


def test_json_body_without_content_type(fake: FakeGraphAPI, client: httpx.Client) -> None:
    body = json.dumps({"data": [make_event("n")], "access_token": TOKEN}).encode()
    response = client.post(url(), content=body)
    assert response.status_code == 200
    assert fake.event_ids() == ["n"]


def test_events_may_come_as_json_strings_as_metas_sdk_sends_them(
    fake: FakeGraphAPI, client: httpx.Client
) -> None:
    events = [make_event("s1"), make_event("s2")]
    data = json.dumps([json.dumps(event) for event in events])
    response = client.post(url(), data={"data": data, "access_token": TOKEN})
    assert response.status_code == 200, response.text
    assert [e.data for e in fake.events] == events
    bad = client.post(url(), data={"data": json.dumps(["not json"]), "access_token": TOKEN})
    assert bad.status_code == 400


def test_form_encoded_over_loopback(fake: FakeGraphAPI, served: httpx.Client) -> None:
    response = served.post(
        url(), data={"data": json.dumps([make_event("l")]), "access_token": TOKEN}
    )
    assert response.status_code == 200
    assert fake.event_ids() == ["l"]


def test_chunked_body_over_loopback(fake: FakeGraphAPI, served: httpx.Client) -> None:
    payload = json.dumps({"data": [make_event("chunked")], "access_token": TOKEN}).encode()

    def chunks() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    response = served.post(url(), content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert fake.event_ids() == ["chunked"]


# -- scripted faults --------------------------------------------------------------------------


def test_fail_next_with_graph_error(fake: FakeGraphAPI, client: httpx.Client) -> None:
    expired = FakeGraphAPI.graph_error(
        190, "Error validating access token: Session has expired", subcode=463
    )
    fake.fail_next(400, error=expired)
    response = post(client, [make_event("x")])

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 190
    assert error["error_subcode"] == 463
    assert error["message"] == "Error validating access token: Session has expired"
    assert error["fbtrace_id"]
    assert fake.events == []
    assert fake.requests[-1].status == 400
    assert fake.requests[-1].error_code == 190
    # The fault is consumed: the next request is validated normally.
    assert post(client, [make_event("x")]).status_code == 200


def test_fail_next_keeps_a_given_fbtrace_id(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.fail_next(500, error={"message": "boom", "code": 2, "fbtrace_id": "TRACE"})
    assert error_of(post(client, [make_event()]))["fbtrace_id"] == "TRACE"


def test_fail_next_raw_body_and_headers(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.fail_next(502, body="<html><body>Bad Gateway</body></html>", headers={"Retry-After": "3"})
    response = post(client, [make_event()])
    assert response.status_code == 502
    assert response.text == "<html><body>Bad Gateway</body></html>"
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["retry-after"] == "3"
    assert fake.events == []


def test_fail_next_headers_override_content_type(client: httpx.Client, fake: FakeGraphAPI) -> None:
    fake.fail_next(500, body=b"oops", headers={"content-type": "application/octet-stream"})
    response = post(client, [make_event()])
    assert response.headers.get_list("content-type") == ["application/octet-stream"]


def test_fail_next_times_and_fifo(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.fail_next(503, times=2)
    fake.fail_next(429, headers={"Retry-After": "1"})
    statuses = [post(client, [make_event(f"e{i}")]).status_code for i in range(4)]
    assert statuses == [503, 503, 429, 200]
    assert fake.event_ids() == ["e3"]
    assert [r.status for r in fake.requests] == [503, 503, 429, 200]


def test_fail_next_default_bodies(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.fail_next(500)
    fake.fail_next(429)
    fake.fail_next(403)
    fake.fail_next(200)
    r500, r429, r403, r200 = (post(client, [make_event()]) for _ in range(4))
    assert error_of(r500)["code"] == 1
    assert error_of(r500)["is_transient"] is True
    assert error_of(r429)["code"] == 80004
    assert error_of(r429)["is_transient"] is True
    assert error_of(r403)["code"] == 100
    # A 200 that was never recorded: "Meta said OK, then lost it".
    assert r200.json()["events_received"] == 1
    assert fake.events == []


def test_fail_next_takes_precedence_over_random_faults() -> None:
    fake = FakeGraphAPI(failure_rate=1.0, failure_statuses=[503], seed=1, clock=fixed_clock)
    fake.fail_next(418, error={"message": "teapot", "code": 1})
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()]).status_code == 418
        assert post(c, [make_event()]).status_code == 503


def test_fail_next_skips_validation(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.fail_next(500)
    assert post(client, [make_event()], token="not-a-valid-token").status_code == 500


def test_fail_next_timeout_in_process(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.fail_next(timeout=True)
    with pytest.raises(httpx.ReadTimeout) as excinfo:
        post(client, [make_event()])
    assert excinfo.value.request.url.path == url()
    assert fake.events == []
    assert fake.requests[-1].status is None
    assert post(client, [make_event()]).status_code == 200


def test_fail_next_over_loopback(fake: FakeGraphAPI, served: httpx.Client) -> None:
    fake.fail_next(
        429,
        error=FakeGraphAPI.graph_error(17, "(#17) User request limit reached", transient=True),
        headers={"Retry-After": "7"},
    )
    fake.fail_next(503, body="Service Unavailable")
    fake.fail_next(timeout=True)

    throttled = post(served, [make_event()])
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "7"
    assert error_of(throttled)["code"] == 17

    unavailable = post(served, [make_event()])
    assert unavailable.status_code == 503
    assert unavailable.text == "Service Unavailable"
    assert unavailable.headers["content-type"].startswith("text/plain")

    with pytest.raises(httpx.TransportError):
        post(served, [make_event()])
    assert fake.requests[-1].status is None

    # The client recovers on a fresh connection.
    assert post(served, [make_event("after")]).status_code == 200
    assert fake.event_ids() == ["after"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"times": 0}, "times", id="times-zero"),
        pytest.param({"error": {"code": 1}, "body": "x"}, "not both", id="error-and-body"),
        pytest.param({"status": 42}, "status", id="bad-status"),
    ],
)
def test_fail_next_argument_checks(
    fake: FakeGraphAPI, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fake.fail_next(**kwargs)


def test_graph_error_helper() -> None:
    assert FakeGraphAPI.graph_error(80004, "slow down", subcode=2446079, transient=True) == {
        "message": "slow down",
        "type": "OAuthException",
        "code": 80004,
        "error_subcode": 2446079,
        "is_transient": True,
    }
    assert FakeGraphAPI.graph_error(1, "x", type="GraphMethodException") == {
        "message": "x",
        "type": "GraphMethodException",
        "code": 1,
        "is_transient": False,
    }


# -- random faults ----------------------------------------------------------------------------


def test_random_faults_statuses_and_bodies() -> None:
    fake = FakeGraphAPI(failure_rate=1.0, seed=1234, clock=fixed_clock)
    seen: dict[int, list[httpx.Response]] = {}
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        for i in range(60):
            response = post(c, [make_event(f"e{i}")])
            seen.setdefault(response.status_code, []).append(response)

    assert set(seen) == {500, 503, 429}
    for response in seen[500]:
        error = error_of(response)
        assert error["code"] == 1
        assert error["message"] == "An unknown error occurred"
        assert error["type"] == "OAuthException"
        assert error["is_transient"] is True
        assert error["fbtrace_id"]
    for response in seen[503]:
        assert "Service Unavailable" in response.text
        assert response.headers["content-type"].startswith("text/html")
        with pytest.raises(json.JSONDecodeError):
            response.json()
    throttle_codes = set()
    for response in seen[429]:
        error = error_of(response)
        assert error["is_transient"] is True
        throttle_codes.add(error["code"])
    assert throttle_codes == {80004, 17}
    for responses in seen.values():
        assert all("retry-after" not in r.headers for r in responses)
    assert fake.events == []
    assert len(fake.requests) == 60


def test_random_faults_are_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[int]:
        fake = FakeGraphAPI(failure_rate=0.5, seed=seed, clock=fixed_clock)
        with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
            return [post(c, [make_event()]).status_code for _ in range(40)]

    first = run(99)
    assert first == run(99)
    assert 200 in first
    assert set(first) - {200}


def test_random_faults_only_drop_faulted_requests() -> None:
    fake = FakeGraphAPI(failure_rate=0.4, failure_statuses=[500], seed=5, clock=fixed_clock)
    accepted = []
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        for i in range(50):
            if post(c, [make_event(f"e{i}")]).status_code == 200:
                accepted.append(f"e{i}")
    assert 0 < len(accepted) < 50
    assert fake.event_ids() == accepted


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"failure_rate": 1.5}, id="rate-above-1"),
        pytest.param({"failure_rate": -0.1}, id="rate-negative"),
        pytest.param({"failure_rate": 0.5, "failure_statuses": []}, id="no-statuses"),
        pytest.param({"min_api_version": "20.0"}, id="bad-min-version"),
        pytest.param({"latency": -1.0}, id="negative-latency"),
    ],
)
def test_constructor_checks(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        FakeGraphAPI(**kwargs)


# -- latency, waiting, concurrency, reset ------------------------------------------------------


def test_latency_sleeps_before_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    fake = FakeGraphAPI(latency=0.25, clock=fixed_clock)
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        post(c, [make_event()])
        post(c, [make_event()], token=None)
    assert slept == [0.25, 0.25]


def test_wait_for_background_sender(fake: FakeGraphAPI) -> None:
    with fake.serve() as base_url:

        def sender() -> None:
            with httpx.Client(base_url=base_url, timeout=10) as c:
                for i in range(5):
                    post(c, [make_event(f"bg{i}")])

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            assert fake.wait_for(5, timeout=10)
        finally:
            thread.join()
    assert sorted(fake.event_ids()) == [f"bg{i}" for i in range(5)]
    assert fake.wait_for(5, timeout=0)
    assert not fake.wait_for(6, timeout=0.01)


def test_concurrent_senders_over_loopback(fake: FakeGraphAPI, served: httpx.Client) -> None:
    def send(i: int) -> int:
        return post(served, [make_event(f"c{i}-a"), make_event(f"c{i}-b")]).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(40)))
    assert statuses == [200] * 40
    assert len(fake.events) == 80
    assert len(set(fake.event_ids())) == 80
    assert len(fake.requests) == 40


def test_concurrent_senders_in_process(fake: FakeGraphAPI, client: httpx.Client) -> None:
    fake.fail_next(500, times=10)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda i: post(client, [make_event(f"p{i}")]).status_code, range(50))
        )
    assert statuses.count(500) == 10
    assert statuses.count(200) == 40
    assert len(fake.events) == 40


def test_reset(fake: FakeGraphAPI, client: httpx.Client) -> None:
    post(client, [make_event()])
    fake.fail_next(500, times=3)
    fake.reset()
    assert fake.events == []
    assert fake.requests == []
    assert fake.event_ids() == []
    assert post(client, [make_event()]).status_code == 200


def test_server_is_quiet_and_stops(fake: FakeGraphAPI, capfd: pytest.CaptureFixture[str]) -> None:
    with fake.serve() as base_url, httpx.Client(base_url=base_url) as c:
        assert post(c, [make_event()]).status_code == 200
        assert post(c, [make_event()], token=None).status_code == 401
        assert c.get("/nowhere").status_code == 404
        head = c.head(url())
        assert head.status_code == 400
        assert head.content == b""
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""
    with pytest.raises(httpx.TransportError), httpx.Client(base_url=base_url) as c:
        c.post(url(), json={})


def test_serve_closes_idle_keep_alive_connections(fake: FakeGraphAPI) -> None:
    with fake.serve() as base_url, httpx.Client(base_url=base_url, timeout=10) as c:
        with fake.serve():
            pass  # a second server, stopped with no connection ever made
        assert post(c, [make_event()]).status_code == 200
        # The client's connection sits idle in its pool while the server stops.
    handlers = [t for t in threading.enumerate() if "process_request_thread" in t.name]
    for thread in handlers:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in handlers)


# -- python -m pixelmirror.testing -------------------------------------------------------------


def test_command_line_server_prints_accepted_events() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixelmirror.testing", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        banner = proc.stderr.readline()
        assert banner.startswith("FakeGraphAPI listening on http://127.0.0.1:"), banner
        base_url = banner.rsplit(" ", 1)[1].strip()
        event = make_event("cli", event_time=int(time.time()))
        with httpx.Client(base_url=base_url, timeout=10) as c:
            response = post(c, [event], test_event_code="TEST1")
        assert response.status_code == 200, response.text
        line = json.loads(proc.stdout.readline())
        assert line == {
            "pixel_id": PIXEL,
            "test_event_code": "TEST1",
            "partner_agent": None,
            "event": event,
        }
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_make_event_fixture_uses_real_hashes() -> None:
    event = make_event()
    assert event["user_data"]["em"] == [
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    ]
    assert event["user_data"]["ph"] == [
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    ]
