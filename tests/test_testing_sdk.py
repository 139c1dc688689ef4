"""FakeGraphAPI driven by Meta's own Python SDK (``facebook_business``) over loopback.

The SDK sends form-encoded requests (the token and ``appsecret_proof`` in the query string,
``data`` a JSON array in the body) and parses Graph's error bodies into
``FacebookRequestError``: what Meta accepts from its own SDK, the fake must accept, and its
refusals must read to the SDK like Meta's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.gender import Gender
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError
from facebook_business.session import FacebookSession

from pixelmirror.testing import (
    SUBCODE_INVALID_HASHED_DATA,
    SUBCODE_TIMESTAMP_TOO_OLD,
    FakeGraphAPI,
)

NOW = 1_700_000_000
DAY = 86_400
PIXEL = "1234567890"
TOKEN = "EAAB-sdk-token"
SECRET = "app-secret"
VERSION = "v21.0"
EMAIL = "Ann.Lee@Example.com "

Connect = Callable[..., FacebookAdsApi]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection the SDK would open beyond loopback (graph.facebook.com, telemetry)."""
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple):
            try:
                loopback = ipaddress.ip_address(address[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise AssertionError(f"a connection tried to leave loopback: {address!r}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def fake() -> FakeGraphAPI:
    return FakeGraphAPI(access_tokens={PIXEL: [TOKEN]}, clock=lambda: float(NOW))


@pytest.fixture
def connect(fake: FakeGraphAPI) -> Iterator[Connect]:
    """Serve ``fake`` on loopback; ``connect(token=..., app_secret=...)`` points the SDK at it
    (or at ``graph_url``)."""
    previous = FacebookAdsApi.get_default_api()
    sessions: list[FacebookSession] = []
    with fake.serve() as base_url:

        def make(
            token: str = TOKEN, app_secret: str | None = None, graph_url: str | None = None
        ) -> FacebookAdsApi:
            session = FacebookSession(access_token=token, app_secret=app_secret)
            session.GRAPH = graph_url or base_url  # the SDK builds every URL from GRAPH
            session.requests.trust_env = False  # no proxy from the environment
            sessions.append(session)
            # Not FacebookAdsApi.init: that also switches on the SDK's crash reporter.
            api = FacebookAdsApi(session, api_version=VERSION)
            FacebookAdsApi.set_default_api(api)  # EventRequest sends through the default API
            return api

        try:
            yield make
        finally:
            FacebookAdsApi.set_default_api(previous)
            for session in sessions:
                session.requests.close()


def sdk_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": "order-1",
        "event_source_url": "https://shop.example/checkout",
        "action_source": ActionSource.WEBSITE,
        "user_data": UserData(
            email=EMAIL,
            external_id="cust-42",  # the SDK sends external_id as given, unhashed
            client_ip_address="2001:db8::7",
            client_user_agent="Mozilla/5.0 (X11; Linux x86_64)",
            fbp="fb.1.1700000000000.1234567",
        ),
        "custom_data": CustomData(value=25.0, currency="USD", content_ids=["tee"]),
    }
    fields.update(overrides)
    return Event(**fields)


def send(*events: Event, **request: Any) -> Any:
    return EventRequest(pixel_id=PIXEL, events=list(events), **request).execute()


def test_sdk_purchase_with_unhashed_external_id_is_accepted(
    fake: FakeGraphAPI, connect: Connect
) -> None:
    connect()
    response = send(sdk_event(), test_event_code="TEST42", partner_agent="pixelmirror")

    assert response.events_received == 1
    assert response.fbtrace_id
    [received] = fake.events
    assert received.event_name == "Purchase"
    assert received.event_id == "order-1"
    assert received.test_event_code == "TEST42"
    assert received.partner_agent == "pixelmirror"
    assert received.user_data["external_id"] == ["cust-42"]
    assert received.user_data["em"] == [sha("ann.lee@example.com")]
    assert received.custom_data["value"] == 25.0
    assert fake.requests[-1].api_version == VERSION


def test_sdk_requests_are_form_encoded_with_the_token_in_the_query(
    fake: FakeGraphAPI, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[httpx.Request] = []
    handle = fake.handle

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handle(request)

    monkeypatch.setattr(fake, "handle", spy)
    with fake.serve() as base_url:  # a second server, started after the spy went in
        connect(graph_url=base_url)
        assert send(sdk_event()).events_received == 1

    [request] = seen
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.url.params["access_token"] == TOKEN
    assert request.content.startswith(b"data=")


@pytest.mark.parametrize(
    "field",
    [
        {"phone": "+1 (650) 555-1212"},
        {"gender": Gender.FEMALE},
        {"date_of_birth": "19970216"},
        {"first_name": "Mary"},
        {"last_name": "Smith"},
        {"city": "San Francisco"},
        {"state": "CA"},
        {"country_code": "US"},
        {"zip_code": "94025"},
        {"external_ids": ["cust-42", "CUST-42-legacy"]},
        {"emails": ["a@example.com", "b@example.com"]},
        {"client_ip_address": "203.0.113.9"},
        {"fbc": "fb.1.1700000000000.AbCdEf"},
        {"subscription_id": "sub-1"},
        {"fb_login_id": "100001"},
        {"lead_id": "lead-1"},
        {"f5first": "marya"},
        {"f5last": "smith"},
        {"fi": "m"},
        {"dobd": "16"},
        {"dobm": "02"},
        {"doby": "1997"},
        {"madid": "38400000-8cf0-11bd-b23e-10b96e40000d"},
        {"anon_id": "anon-1"},
        {"ctwa_clid": "clid-1"},
        {"page_id": "12345"},
    ],
    ids=lambda field: next(iter(field)),
)
def test_every_user_data_field_the_sdk_sends_is_accepted(
    fake: FakeGraphAPI, connect: Connect, field: dict[str, Any]
) -> None:
    connect()
    user_data = UserData(client_user_agent="UA", fbp="fb.1.1700000000000.1234567", **field)
    assert send(sdk_event(user_data=user_data)).events_received == 1
    assert len(fake.events) == 1


@pytest.mark.parametrize("source", list(ActionSource), ids=lambda source: source.value)
def test_every_action_source_the_sdk_knows_is_accepted(
    fake: FakeGraphAPI, connect: Connect, source: ActionSource
) -> None:
    connect()
    assert send(sdk_event(action_source=source)).events_received == 1
    assert fake.events[0].action_source == source.value


def test_sdk_appsecret_proof_is_accepted_and_a_wrong_one_refused(connect: Connect) -> None:
    fake = FakeGraphAPI(access_tokens=[TOKEN], app_secret=SECRET, clock=lambda: float(NOW))
    with fake.serve() as base_url:
        connect(app_secret=SECRET, graph_url=base_url)
        assert send(sdk_event()).events_received == 1

        connect(app_secret="not-the-secret", graph_url=base_url)
        with pytest.raises(FacebookRequestError) as caught:
            send(sdk_event())
    assert caught.value.api_error_code() == 100
    assert caught.value.api_error_message() == (
        "Invalid appsecret_proof provided in the API argument"
    )
    assert len(fake.events) == 1


def assert_graph_error(error: FacebookRequestError) -> dict[str, Any]:
    """The SDK parsed the fake's error body as it parses Meta's."""
    assert error.http_status() == 400
    body: dict[str, Any] = error.body()["error"]
    assert error.api_error_code() == body["code"]
    assert error.api_error_subcode() == body.get("error_subcode")
    assert error.api_error_message() == body["message"]
    assert error.api_error_type() == body["type"]
    assert error.api_transient_error() is False
    assert body["fbtrace_id"]
    assert error.http_headers()["x-fb-trace-id"] == body["fbtrace_id"]
    return body


def test_sdk_raises_code_190_for_a_bad_token(fake: FakeGraphAPI, connect: Connect) -> None:
    connect(token="EAAB-not-a-token")
    with pytest.raises(FacebookRequestError) as caught:
        send(sdk_event())

    body = assert_graph_error(caught.value)
    assert caught.value.api_error_code() == 190
    assert caught.value.api_error_subcode() is None
    assert caught.value.api_error_type() == "OAuthException"
    assert "access token" in body["message"]
    assert fake.events == []


def test_sdk_raises_code_190_subcode_460_for_a_revoked_token(
    fake: FakeGraphAPI, connect: Connect
) -> None:
    fake.revoke(TOKEN)
    connect()
    with pytest.raises(FacebookRequestError) as caught:
        send(sdk_event())
    assert_graph_error(caught.value)
    assert (caught.value.api_error_code(), caught.value.api_error_subcode()) == (190, 460)


def test_sdk_raises_code_100_with_the_event_subcode_for_an_event_too_old(
    fake: FakeGraphAPI, connect: Connect
) -> None:
    connect()
    too_old = sdk_event(event_id="old", event_time=NOW - 7 * DAY - 1)
    with pytest.raises(FacebookRequestError) as caught:
        send(sdk_event(), too_old)

    body = assert_graph_error(caught.value)
    assert caught.value.api_error_code() == 100
    assert caught.value.api_error_subcode() == SUBCODE_TIMESTAMP_TOO_OLD
    assert body["error_user_title"] == "Event Timestamp Too Old"
    assert body["error_user_msg"].startswith("event index 1: ")
    assert fake.events == []  # one bad event refuses the whole request
    assert fake.requests[-1].event_count == 2


def test_sdk_passes_md5_looking_values_unhashed_and_the_fake_refuses_them(
    fake: FakeGraphAPI, connect: Connect
) -> None:
    # Meta's docs want SHA-256; the SDK takes 32 hex characters for a hash and sends them as
    # they are. The fake keeps to the docs.
    connect()
    md5 = hashlib.md5(b"ann@example.com").hexdigest()
    with pytest.raises(FacebookRequestError) as caught:
        send(sdk_event(user_data=UserData(email=md5, client_user_agent="UA")))
    assert_graph_error(caught.value)
    assert caught.value.api_error_subcode() == SUBCODE_INVALID_HASHED_DATA
    assert md5 not in str(caught.value.body())
