"""The ways FakeGraphAPI reads a request, as Graph does: JSON, form, query, headers."""

from __future__ import annotations

import json

import httpx
import pytest

from fakegraph import (
    PIXEL,
    TOKEN,
    assert_rejected,
    make_event,
    url,
)
from pixelmirror.testing import FakeGraphAPI


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        pytest.param(b"{not json", {"Content-Type": "application/json"}, id="bad-json"),
        pytest.param(b"[1, 2]", {"Content-Type": "application/json"}, id="json-array"),
        pytest.param(b"<xml/>", {"Content-Type": "application/xml"}, id="xml"),
    ],
)
def test_unparsable_bodies(
    clocked_fake: FakeGraphAPI,
    clocked_client: httpx.Client,
    content: bytes,
    headers: dict[str, str],
) -> None:
    response = clocked_client.post(
        url(), content=content, headers=headers, params={"access_token": TOKEN}
    )
    assert_rejected(clocked_fake, response)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v20.0/not-a-pixel/events", id="non-digit-pixel"),
        pytest.param(f"/v20.0/{PIXEL}/activities", id="other-edge"),
        pytest.param(f"/v20.0/{PIXEL}", id="node-only"),
        pytest.param("/", id="root"),
    ],
)
def test_unknown_paths(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client, path: str) -> None:
    response = clocked_client.post(path, json={"data": [make_event()], "access_token": TOKEN})
    error = assert_rejected(clocked_fake, response, status=404, subcode=33)
    assert "does not exist" in error["message"]
    assert clocked_fake.requests[-1].pixel_id is None


def test_non_post_method(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    response = clocked_client.get(url(), params={"access_token": TOKEN})
    error = assert_rejected(clocked_fake, response, subcode=33)
    assert error["message"].startswith("Unsupported get request.")


@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_form_fields_are_read_urlencoded_or_multipart(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client, encoding: str
) -> None:
    # Multipart is what Meta's own curl examples send (curl -F data=... -F access_token=...).
    events = [make_event("f1"), make_event("f2")]
    fields = {
        "data": json.dumps(events),
        "access_token": TOKEN,
        "test_event_code": "TEST9",
        "partner_agent": "pixelmirror",
    }
    if encoding == "form":
        response = clocked_client.post(url(), data=fields)
    else:
        multipart = {name: (None, value.encode()) for name, value in fields.items()}
        response = clocked_client.post(url(), files=multipart)
        assert response.request.headers["Content-Type"].startswith("multipart/form-data")
    assert response.status_code == 200, response.text
    assert [e.data for e in clocked_fake.events] == events
    assert clocked_fake.events[0].test_event_code == "TEST9"
    assert clocked_fake.requests[-1].partner_agent == "pixelmirror"


def test_query_string_token_with_json_body(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    response = clocked_client.post(
        url(), params={"access_token": TOKEN}, json={"data": [make_event()]}
    )
    assert response.status_code == 200
    assert clocked_fake.events[0].access_token == TOKEN


@pytest.mark.parametrize("scheme", ["OAuth", "Bearer"])
def test_token_in_authorization_header(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client, scheme: str
) -> None:
    response = clocked_client.post(
        url(), headers={"Authorization": f"{scheme} {TOKEN}"}, json={"data": [make_event()]}
    )
    assert response.status_code == 200
    assert clocked_fake.requests[-1].access_token == TOKEN


def test_body_wins_over_query(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    response = clocked_client.post(
        url(),
        params={"access_token": "stale"},
        json={"data": [make_event()], "access_token": TOKEN},
    )
    assert response.status_code == 200


def test_everything_in_the_query_string(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    response = clocked_client.post(
        url(), params={"access_token": TOKEN, "data": json.dumps([make_event("q")])}
    )
    assert response.status_code == 200
    assert clocked_fake.event_ids() == ["q"]


def test_json_body_with_data_as_string(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    response = clocked_client.post(
        url(), json={"data": json.dumps([make_event("s")]), "access_token": TOKEN}
    )
    assert response.status_code == 200
    assert clocked_fake.event_ids() == ["s"]


def test_json_body_without_content_type(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    body = json.dumps({"data": [make_event("n")], "access_token": TOKEN}).encode()
    response = clocked_client.post(url(), content=body)
    assert response.status_code == 200
    assert clocked_fake.event_ids() == ["n"]


def test_events_may_come_as_json_strings_as_metas_sdk_sends_them(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    events = [make_event("s1"), make_event("s2")]
    data = json.dumps([json.dumps(event) for event in events])
    response = clocked_client.post(url(), data={"data": data, "access_token": TOKEN})
    assert response.status_code == 200, response.text
    assert [e.data for e in clocked_fake.events] == events
    bad = clocked_client.post(url(), data={"data": json.dumps(["not json"]), "access_token": TOKEN})
    assert bad.status_code == 400
