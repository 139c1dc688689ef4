"""FakeGraphAPI judges events by its own copy of Meta's rules (``pixelmirror.testing.rules``)."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakegraph import (
    DAY,
    GRAPH,
    NOW,
    assert_rejected,
    make_event,
    post,
    sha,
)
from pixelmirror import testing
from pixelmirror.testing import FakeGraphAPI


def test_custom_data_defaults_to_empty(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    event = make_event(event_name="Lead")
    del event["custom_data"]
    assert post(clocked_client, [event]).status_code == 200
    assert clocked_fake.events[0].custom_data == {}


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
        pytest.param(
            make_event(
                user_data={
                    "client_user_agent": "UA",
                    "lead_id": 1234567890123456,
                    "fb_login_id": "100001",
                    "subscription_id": "sub-1",
                }
            ),
            id="never-hashed-ids-as-numbers-or-strings",
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
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client, event: dict[str, Any]
) -> None:
    response = post(clocked_client, [event])
    assert response.status_code == 200, response.text
    assert len(clocked_fake.events) == 1


def test_exactly_1000_events_accepted(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    response = post(clocked_client, [make_event(f"e{i}") for i in range(1000)])
    assert response.json()["events_received"] == 1000
    assert len(clocked_fake.events) == 1000


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
        pytest.param(user("fbc", [sha("a")]), None, "fbc", id="fbc-list"),
        pytest.param(user("lead_id", ["1"]), None, "lead_id", id="lead-id-list"),
        pytest.param(user("subscription_id", ""), None, "subscription_id", id="sub-id-empty"),
        pytest.param(user("fb_login_id", None), None, "fb_login_id", id="login-id-null"),
        pytest.param(user("fb_login_id", True), None, "fb_login_id", id="login-id-bool"),
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
    clocked_fake: FakeGraphAPI,
    clocked_client: httpx.Client,
    mutate: Mutator,
    subcode: int | None,
    fragment: str,
) -> None:
    bad = make_event("bad")
    mutate(bad)
    response = post(
        clocked_client, [make_event("ok-0"), make_event("ok-1"), bad, make_event("ok-3")]
    )

    error = assert_rejected(clocked_fake, response, subcode=subcode)
    assert clocked_fake.events == []
    assert error["error_user_msg"].startswith("event index 2: ")
    assert fragment in error["error_user_msg"]
    assert error["error_user_title"]
    assert clocked_fake.requests[-1].event_count == 4


def test_raw_pii_is_not_echoed_in_the_error(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    bad = make_event()
    bad["user_data"]["em"] = "john_smith@gmail.com"
    response = post(clocked_client, [bad])
    assert_rejected(clocked_fake, response, subcode=HASH)
    assert "john_smith" not in response.text


def test_first_bad_event_is_reported(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    response = post(clocked_client, [make_event(), "not an object", make_event(event_name="")])
    error = assert_rejected(clocked_fake, response)
    assert error["error_user_msg"].startswith("event index 1: ")


def test_clock_drives_the_time_window() -> None:
    now = [float(NOW)]
    fake = FakeGraphAPI(clock=lambda: now[0])
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()]).status_code == 200
        now[0] += 8 * DAY
        fake.reset()
        assert_rejected(fake, post(c, [make_event()]), subcode=TOO_OLD)


def test_make_event_fixture_uses_real_hashes() -> None:
    event = make_event()
    assert event["user_data"]["em"] == [
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    ]
    assert event["user_data"]["ph"] == [
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    ]


def test_the_fake_imports_no_production_module() -> None:
    # The fake keeps its own copy of Meta's rules: borrowing production's would let a wrong
    # production rule pass its own check.
    package = Path(testing.__file__).parent
    borrowed = []
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            borrowed += [
                f"{module.name}: {name}"
                for name in names
                if name.split(".")[0] == "pixelmirror"
                and not name.startswith("pixelmirror.testing")
            ]
    assert borrowed == []
