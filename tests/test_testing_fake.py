"""FakeGraphAPI's recordings, request-level checks, API versions, tokens and appsecret_proof."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from fakegraph import (
    GRAPH,
    NOW,
    OTHER_PIXEL,
    PIXEL,
    TOKEN,
    assert_rejected,
    fixed_clock,
    make_event,
    post,
    proof,
    sha,
    url,
)
from pixelmirror.testing import FakeGraphAPI


def test_valid_batch_is_accepted_and_recorded(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    events = [make_event("a"), make_event("b", event_name="AddToCart", custom_data={})]
    response = post(clocked_client, events, test_event_code="TEST123", partner_agent="pixelmirror")

    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 2
    assert body["messages"] == []
    assert body["fbtrace_id"]
    assert response.headers["content-type"].startswith("application/json")

    received = clocked_fake.events
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
    assert clocked_fake.event_ids() == ["a", "b"]

    (request,) = clocked_fake.requests
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


def test_event_ids_keep_duplicates_and_skip_missing(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    no_id = make_event()
    del no_id["event_id"]
    post(clocked_client, [make_event("x"), no_id, make_event("x")])
    assert clocked_fake.event_ids() == ["x", "x"]
    assert clocked_fake.events[1].event_id is None


def test_recordings_are_copies(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    post(clocked_client, [make_event("a")])
    clocked_fake.events[0].data["event_name"] = "Mutated"
    clocked_fake.events[0].user_data.clear()
    clocked_fake.requests.clear()
    assert clocked_fake.events[0].event_name == "Purchase"
    assert clocked_fake.events[0].user_data
    assert len(clocked_fake.requests) == 1


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
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client, body: dict[str, Any], fragment: str
) -> None:
    response = clocked_client.post(url(), json=body)
    error = assert_rejected(clocked_fake, response)
    assert fragment in error["message"]


def test_1001_events_are_counted_but_not_accepted(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    assert_rejected(clocked_fake, post(clocked_client, [make_event(f"e{i}") for i in range(1001)]))
    assert clocked_fake.requests[-1].event_count == 1001


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
def test_dead_versions_answer_2635(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client, path: str
) -> None:
    response = clocked_client.post(path, json={"data": [make_event()], "access_token": TOKEN})
    error = assert_rejected(clocked_fake, response, code=2635)
    assert error["message"].startswith("(#2635) You are calling a deprecated version")
    assert "v20.0" in error["message"]


@pytest.mark.parametrize("version", ["v20.0", "v20.1", "v26.0", "v100.0"])
def test_current_versions_accepted(clocked_client: httpx.Client, version: str) -> None:
    assert post(clocked_client, [make_event()], version=version).status_code == 200


def test_min_api_version_is_configurable() -> None:
    fake = FakeGraphAPI(min_api_version="v26.0", clock=fixed_clock)
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert_rejected(fake, post(c, [make_event()], version="v25.9"), code=2635)
        assert post(c, [make_event()], version="v26.0").status_code == 200


def test_missing_token(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    assert_rejected(
        clocked_fake, post(clocked_client, [make_event()], token=None), status=401, code=190
    )
    assert_rejected(
        clocked_fake, post(clocked_client, [make_event()], token=""), status=401, code=190
    )
    assert clocked_fake.requests[-1].access_token == ""


def test_unknown_token(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    error = assert_rejected(
        clocked_fake, post(clocked_client, [make_event()], token="nope"), code=190
    )
    assert error["type"] == "OAuthException"
    assert "Invalid OAuth access token" in error["message"]


def test_non_string_token(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    response = clocked_client.post(url(), json={"data": [make_event()], "access_token": 12345})
    assert_rejected(clocked_fake, response, code=190)
    assert clocked_fake.requests[-1].access_token is None


def test_revoke_and_grant(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    clocked_fake.revoke(TOKEN)
    error = assert_rejected(
        clocked_fake, post(clocked_client, [make_event()]), code=190, subcode=460
    )
    assert "session has been invalidated" in error["message"]

    clocked_fake.grant(TOKEN)
    assert post(clocked_client, [make_event()]).status_code == 200

    clocked_fake.grant("EAAB-new")
    assert post(clocked_client, [make_event()], token="EAAB-new").status_code == 200
    assert (
        post(clocked_client, [make_event()], pixel=OTHER_PIXEL, token="EAAB-new").status_code == 200
    )


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


def test_latency_sleeps_before_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    fake = FakeGraphAPI(latency=0.25, clock=fixed_clock)
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        post(c, [make_event()])
        post(c, [make_event()], token=None)
    assert slept == [0.25, 0.25]


def test_concurrent_senders_in_process(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    clocked_fake.fail_next(500, times=10)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda i: post(clocked_client, [make_event(f"p{i}")]).status_code, range(50))
        )
    assert statuses.count(500) == 10
    assert statuses.count(200) == 40
    assert len(clocked_fake.events) == 40


def test_reset(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    post(clocked_client, [make_event()])
    clocked_fake.fail_next(500, times=3)
    clocked_fake.reset()
    assert clocked_fake.events == []
    assert clocked_fake.requests == []
    assert clocked_fake.event_ids() == []
    assert post(clocked_client, [make_event()]).status_code == 200
